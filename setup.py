"""The one thing setup.cfg cannot say: the SFU's forwarding path is a C extension (see
appliance/sfu/_fastpath.c). Building it needs a C compiler and Python's headers (Debian:
gcc, python3-dev); a release wheel carries it built."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("appliance.sfu._fastpath", ["appliance/sfu/_fastpath.c"],
                             extra_compile_args=["-O2", "-Wall", "-Werror=implicit-function-declaration"])])
