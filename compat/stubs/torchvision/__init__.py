"""Import-only stand-in for torchvision (the harness's, not the reference's).

esper-lite's ``esper.utils.data`` imports torchvision at module level for CIFAR-10 loading.
The PyPI torchvision wheels for torch 2.13 are CUDA builds whose native ops fail to register
against the installed CPU torch, and installing a matching one would replace torch. No test in
the selection loads CIFAR-10; any that touches ``torchvision.datasets`` or ``transforms``
fails loudly with this module's error.
"""
from . import datasets, transforms  # noqa: F401

__version__ = "0.0.0-compat-stub"
