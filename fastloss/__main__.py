"""``python -m fastloss [info|selfcheck|bench|warmup]``: see ``fastloss/_cli.py``."""

from fastloss._cli import main

if __name__ == "__main__":
    raise SystemExit(main())
