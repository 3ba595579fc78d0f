"""The main job (``inv all``): host setup when needed, fetch, patch, build, image, image test.

Each phase is the same engine function its own verb runs; this module only sequences them and
prints where the result is.  The image test is skipped when this exact image id already
passed it in the same engine (:func:`askbuild.imagetest.already_passed`; ``retest`` forces
it).  The phase modules are imported when the job runs, not when this module is imported.
"""

from __future__ import annotations

import time

from . import console, dockerhost, runlock
from .settings import Settings

DEFAULT_TAG = "dev"     # = imaging.DEFAULT_TAG (not imported here: imaging is heavy)


@runlock.exclusive("all")
def run_all(settings: Settings, *, tag: str = DEFAULT_TAG, load: bool = True,
            retest: bool = False) -> None:
    """Every phase in order, each stopping the job on failure; holds the work-dir lock."""
    from . import building, fetching, hostdeps, imagetest, imaging, patchqueue
    t0 = time.monotonic()
    console.step(f"host prerequisites (profile {settings.profile})")
    hostdeps.ensure(settings)
    console.step("fetch")
    fetching.fetch(settings, [])
    with patchqueue.one_check_per_run():    # (the build asks again what patch just checked)
        console.step("patch")
        patchqueue.patch(settings, [])
        console.step("build")
        building.build(settings, [], keep_going=False, ccache=False)
    console.step("image")
    result = imaging.image(settings, tag=tag, output=None, load=load)
    test_words = imaging.tag_words(tag)
    if not result.loaded:
        console.info("no Docker engine loaded the image: skipping "
                     f"`{settings.command('image.test', *test_words)}`")
    elif not retest and imagetest.already_passed(settings, result.ref, result.image_id):
        console.info(f"image test skipped: {result.ref} ({result.image_id}) already passed "
                     f"`{settings.command('image.test', *test_words)}` in the engine at "
                     f"{dockerhost.engine_host()} (`{settings.command('all', '--retest')}` "
                     "runs it again)")
    else:
        console.step("image test")
        imagetest.test(settings, tag=tag)
    console.info(f"done in {time.monotonic() - t0:.0f} s")
