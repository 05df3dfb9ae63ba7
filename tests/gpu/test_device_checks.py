"""The device checks that ship in the package (``labo_fairseq.gpu.device_checks``, run by gpu_check from
an installed wheel too), collected here so the normal suite runs the same code with ``device=cpu``."""

from labo_fairseq.gpu.device_checks import *  # noqa: F403
