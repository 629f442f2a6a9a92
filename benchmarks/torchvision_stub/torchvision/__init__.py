"""A minimal torchvision stand-in, only for building timm models in benchmarks (pretrained=False).

The torchvision wheel on the index is a CUDA build that breaks the CPU torch installed here; timm
imports a handful of names at import time (FrozenBatchNorm2d, transforms, InterpolationMode). This
package provides those and nothing else; data transforms raise if used.
"""

__version__ = "0.0.0+stub"
