"""Dump the lenet5-digits task data to an .npz so the MXNet venv (no torch) can read it.

Runs in the main project environment. Usage: dump_digits.py OUT.npz
"""

import sys

import numpy as np

import torchslim as ts


def main() -> None:
    data = ts.zoo.get("lenet5-digits").data
    # Plain arrays only, so the reader can use allow_pickle=False.
    arrays = {k: data[k].detach().cpu().numpy() for k in ("x_train", "y_train", "x_test", "y_test")}
    np.savez(sys.argv[1], **arrays)
    print({k: (v.shape, str(v.dtype)) for k, v in arrays.items()})


if __name__ == "__main__":
    main()
