"""The preset names, in one torch-free module (the CLI's parser imports it for `--help` without loading torch).

``unit`` tests only; ``smoke`` CI and set-up checks; ``lesson`` the teaching preset of the goldens; ``paper`` the
real datasets at the papers' resolution and schedule (GPU). What each means per notebook family lives in
``mtlkit.course``; the contract is docs/contracts.md#presets.
"""
PRESETS: tuple[str, ...] = ("unit", "smoke", "lesson", "paper")
