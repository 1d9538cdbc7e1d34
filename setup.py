"""The compiled part of watchkeep: the per-packet H.264/H.265 RTP work (see
src/watchkeep/media/_rtp_native.c). Optional: where it cannot be built (no C compiler), the
same work runs in Python (watchkeep.media._rtp_h26x), slower. Everything else about the
package is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "watchkeep.media._rtp_native",
            ["src/watchkeep/media/_rtp_native.c"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ]
)
