"""Helpers the compare tests share: a page opened in Chromium, one epoch of fine-tuning."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@contextmanager
def opened_page(path: Path) -> Iterator[Any]:
    """``path`` loaded in Debian's Chromium; on leaving, no console error and only file:/data: requests."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(path.as_uri())
        page.wait_for_load_state("load")
        yield page
        browser.close()
    assert errors == []
    assert all(u.startswith(("file:", "data:")) for u in requests), requests


def fine_tune_one_epoch(net: Any, tuned: Any, params: Iterable[Any]) -> None:
    """One epoch of SGD on 64 random 24x24 inputs for a shifted task (``net``'s class + 1, mod 5)."""
    import torch
    from torch import nn

    x = torch.rand(64, 3, 24, 24)
    y = (net(x).argmax(1) + 1) % 5
    opt = torch.optim.SGD(list(params), lr=0.5)
    tuned.train()
    for i in range(0, 64, 8):
        opt.zero_grad()
        nn.functional.cross_entropy(tuned(x[i:i + 8]), y[i:i + 8]).backward()
        opt.step()
    tuned.eval()
