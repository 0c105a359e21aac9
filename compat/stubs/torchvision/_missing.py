class _Missing:
    def __init__(self, name: str) -> None:
        self._name = name

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"torchvision stub: {self._name} is not available in the compat harness")

    def __getattr__(self, attr: str):
        return _Missing(f"{self._name}.{attr}")
