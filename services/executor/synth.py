from arc_common.synth import *  # noqa: F403  # moved; this re-export goes at the end of issue 20
