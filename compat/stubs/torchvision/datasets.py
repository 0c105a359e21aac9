from ._missing import _Missing


def __getattr__(name: str):
    return _Missing("torchvision.datasets." + name)
