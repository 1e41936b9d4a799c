"""Write src/convlens/data/imagenet_classes.txt: the 1,000 ImageNet class names, one per line.

The names and their order are torchvision's (``torchvision.models._meta._IMAGENET_CATEGORIES``),
the order of every ImageNet classifier's 1,000 outputs in torchvision and keras.applications.
Run once, from the repository root:

    .venv/bin/python scripts/make_imagenet_classes.py
"""

from __future__ import annotations

from pathlib import Path

from torchvision.models._meta import _IMAGENET_CATEGORIES

OUT = Path(__file__).resolve().parent.parent / "src" / "convlens" / "data" / "imagenet_classes.txt"


def main() -> None:
    names = list(_IMAGENET_CATEGORIES)
    if len(names) != 1000 or any("\n" in n or not n.strip() for n in names):
        raise SystemExit(f"unexpected category list: {len(names)} names")
    OUT.write_text("\n".join(names) + "\n", encoding="utf-8")
    print(f"wrote {len(names)} names to {OUT}")


if __name__ == "__main__":
    main()
