"""The main job (``inv all``): host setup when needed, fetch, patch, build, image, image test.

Each phase is the same engine function its own verb runs; this module only sequences them and
prints where the result is.
"""

from __future__ import annotations

import time

from . import building, console, fetching, hostdeps, imagetest, imaging, patchqueue, runlock
from .settings import Settings


@runlock.exclusive("all")
def run_all(settings: Settings, *, tag: str = imaging.DEFAULT_TAG, load: bool = True) -> None:
    """Every phase in order, each stopping the job on failure; holds the work-dir lock."""
    t0 = time.monotonic()
    console.step(f"host prerequisites (profile {settings.profile})")
    hostdeps.ensure(settings)
    console.step("fetch")
    fetching.fetch(settings, [])
    console.step("patch")
    patchqueue.patch(settings, [])
    console.step("build")
    building.build(settings, [], keep_going=False, ccache=False)
    console.step("image")
    result = imaging.image(settings, tag=tag, output=None, load=load)
    if result.loaded:
        console.step("image test")
        imagetest.test(settings, tag=tag)
    else:
        console.info("no Docker engine loaded the image: skipping "
                     f"`{settings.command('image.test', *imaging.tag_words(tag))}`")
    console.info(f"done in {time.monotonic() - t0:.0f} s")
