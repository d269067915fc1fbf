"""Validates a bioimage.io model package with bioimageio.core and runs its test-model check
(the package's TorchScript weights on its test input, with the package's preprocessing,
against its test output). Prints the outcome as JSON: status, failed checks, the
preprocessing the description declares, and the status of a copy of the package whose test
output is changed by 2 % (which must fail).

With ZIP, the same package as a zip file is tested too (`zip_status`).

usage: check_bioimageio.py RDF_YAML [ZIP]
"""

import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np


def main(rdf: str, zip_path: str = "") -> None:
    import pydantic
    from bioimageio.core import test_model
    from bioimageio.spec import load_description

    summary = test_model(rdf)
    failed = [
        {"name": d.name, "errors": [f"{e.loc}: {e.msg}" for e in d.errors]}
        for d in summary.details
        if d.status != "passed"
    ]
    if summary.status != "passed":
        print(json.dumps({"status": summary.status, "failed": failed, "pydantic": pydantic.VERSION}))
        return
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "package"
        shutil.copytree(Path(rdf).parent, copy)
        out = copy / "test_output.npy"
        old = hashlib.sha256(out.read_bytes()).hexdigest()
        np.save(out, np.load(out) * 1.02)
        new = hashlib.sha256(out.read_bytes()).hexdigest()
        text = (copy / "rdf.yaml").read_text()
        (copy / "rdf.yaml").write_text(text.replace(old, new))
        perturbed = test_model(copy / "rdf.yaml").status
    descr = load_description(rdf)
    # The weights on the test input normalised with numpy's percentiles as declared, against
    # the test output: the number bioimageio.core's tolerance is applied to.
    import torch

    pkg = Path(rdf).parent
    raw = np.load(pkg / "test_input.npy")
    kw = next(p.kwargs for p in descr.inputs[0].preprocessing if p.id == "scale_range")
    lo, hi = np.percentile(raw, [kw.min_percentile, kw.max_percentile])
    x = np.clip((raw - lo) / (hi - lo + kw.eps), 0, 1).astype("float32")
    with torch.no_grad():
        y = torch.jit.load(str(pkg / "ais.pt"))(torch.from_numpy(x)).numpy()
    max_diff = float(np.abs(y - np.load(pkg / "test_output.npy")).max())
    pre = []
    if hasattr(descr, "inputs"):
        pre = [
            {"id": p.id, "kwargs": p.kwargs.model_dump(mode="json")}
            for p in descr.inputs[0].preprocessing
        ]
    print(
        json.dumps(
            {
                "status": summary.status,
                "perturbed_status": perturbed,
                "zip_status": test_model(zip_path).status if zip_path else None,
                "max_abs_diff": max_diff,
                "failed": failed,
                "preprocessing": pre,
                "format_version": getattr(descr, "format_version", None),
                "pydantic": pydantic.VERSION,
            }
        )
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
