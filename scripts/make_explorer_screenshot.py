"""Write docs/img/explorer.png: the interactive explorer in headless Chromium, one head clicked.

The circuit is a real run: `circuits discover` on the bundled stories260k model, pronoun task,
EAP-IG (inputs), the top 60 edges, 40 examples split 20/20 (seed 0), with its faithfulness curve.
Needs Debian's `chromium` (apt-get install chromium); the browser is driven by tests/chromium.py.

    PYTHONPATH=. python scripts/make_explorer_screenshot.py [--out docs/img/explorer.png]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import circuits
from circuits.pipeline import discover
from circuits.render import render_explorer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the DevTools-pipe driver the browser tests use
from chromium import Browser, find_chromium  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "img" / "explorer.png"))
    ap.add_argument("--node", default=None, help="node to click (default: the drawn head with the most paths)")
    args = ap.parse_args()
    binary = find_chromium()
    if binary is None:
        sys.exit("chromium not installed: apt-get install chromium")
    model, tok = circuits.zoo.load("stories260k")
    task = circuits.load_task("pronoun", tok, n=40, seed=0)
    train, test = task.split(0.5, seed=0)
    found = discover(model, train, test, "eap-ig-inputs", edges=60, model_name="stories260k", seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        page = render_explorer(found.circuit, Path(tmp) / "explorer.html", curve=found.curve)
        browser = Browser(binary, Path(tmp) / "profile", width=1100, height=760)
        try:
            browser.open(page.as_uri())
            heads = browser.eval("window.explorer.drawn.map(d => window.explorer.data.nodes[d.s])"
                                 ".filter(n => n.kind === 'head').map(n => n.name)")
            node = args.node or max(set(heads), key=heads.count)
            x, y = browser.eval(f"(() => {{ const r = document.querySelector('.node[data-name=\"{node}\"]')"
                                ".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
            browser.click(x, y)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            browser.screenshot(Path(args.out))
            errors = browser.errors()
        finally:
            browser.close()
    if errors:
        sys.exit(f"the page reported errors: {errors}")
    print(f"wrote {args.out} ({found.circuit.n_circuit_edges} edges, faithfulness {found.report.faithfulness:.3f}, "
          f"clicked {node})")


if __name__ == "__main__":
    main()
