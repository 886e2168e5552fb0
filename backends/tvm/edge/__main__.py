"""``python -m graphopt.backends.tvm.edge``: fetch the aarch64 TVM runtime and report what is missing."""

import sys

from graphopt.backends.tvm.edge.toolchain import main

sys.exit(main())
