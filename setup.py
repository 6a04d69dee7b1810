"""The one thing setup.cfg cannot say: the SFU's forwarding path is a C extension (see
appliance/sfu/_fastpath.c), built against Python's stable ABI, so that one wheel
(confmeet-VERSION-cp311-abi3-linux_x86_64.whl) installs on Python 3.11 and later. Building it
needs a C compiler and Python's headers (Debian: gcc, python3-dev)."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("appliance.sfu._fastpath", ["appliance/sfu/_fastpath.c"], py_limited_api=True,
                             define_macros=[("Py_LIMITED_API", "0x030B0000")],
                             extra_compile_args=["-O2", "-Wall", "-Werror=implicit-function-declaration"])],
      options={"bdist_wheel": {"py_limited_api": "cp311"}})
