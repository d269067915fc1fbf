"""Validates a bioimage.io model package with bioimageio.core and runs its test-model check
(the package's TorchScript weights on its test input, with the package's preprocessing,
against its test output). Prints the outcome as JSON: status, failed checks, and the
preprocessing the description declares.

usage: check_bioimageio.py RDF_YAML
"""

import json
import sys


def main(rdf: str) -> None:
    import pydantic
    from bioimageio.core import test_model
    from bioimageio.spec import load_description

    summary = test_model(rdf)
    failed = [
        {"name": d.name, "errors": [f"{e.loc}: {e.msg}" for e in d.errors]}
        for d in summary.details
        if d.status != "passed"
    ]
    descr = load_description(rdf)
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
                "failed": failed,
                "preprocessing": pre,
                "format_version": getattr(descr, "format_version", None),
                "pydantic": pydantic.VERSION,
            }
        )
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
