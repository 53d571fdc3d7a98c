"""Load an exported model the way a serving process would: torch and fbgemm_gpu only.

    python tests/workers/load_artifact.py DIR [--batches IN.pt --out OUT.pt]

Before anything else it makes ``fusionrec`` and ``torchrec`` unimportable (an import raises),
then loads DIR/model.pt with ``torch.jit.load``, runs ``model(*torch.load(example_inputs))``
and compares it with the saved example outputs; with ``--batches``, it also scores every
input tuple in IN.pt (a list of tuples) and saves the predictions to OUT.pt. Prints one JSON
line: what ran, the largest difference, and which of the two packages ended up imported.
"""

import sys

BLOCKED = ("fusionrec", "torchrec")


class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked in this process")
        return None


sys.meta_path.insert(0, _Block())
sys.path = [p for p in sys.path if p not in ("", ".")]

import argparse  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import fbgemm_gpu  # noqa: E402, F401  (registers torch.ops.fbgemm.*)
import torch  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("dir")
    parser.add_argument("--batches")
    parser.add_argument("--out")
    args = parser.parse_args()
    folder = Path(args.dir)
    manifest = json.loads((folder / "manifest.json").read_text())
    model = torch.jit.load(str(folder / manifest["file"]))
    model.eval()
    inputs = torch.load(folder / manifest["example_inputs"])
    expected = torch.load(folder / manifest["example_outputs"])
    with torch.no_grad():
        got = model(*inputs)
        result = {
            "example_shape": list(got.shape),
            "example_max_abs_diff": float((got - expected).abs().max()),
            "input_dtypes": [str(t.dtype).replace("torch.", "") for t in inputs],
        }
        if args.batches:
            outputs = [model(*batch) for batch in torch.load(args.batches)]
            torch.save(outputs, args.out)
            result["batches"] = len(outputs)
    try:
        import fusionrec  # noqa: F401
        result["fusionrec_importable"] = True
    except ImportError:
        result["fusionrec_importable"] = False
    result["imported"] = sorted({k.split(".")[0] for k in sys.modules if k.split(".")[0] in BLOCKED})
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
