"""Distillation and the shared trainer. Importing registers the `keep_blocks` transform for `ts.load`."""

from torchslim.distill import students as students
