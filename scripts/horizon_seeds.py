"""The horizon study's tables and plot from all of its seeds, when the seeds were run as separate experiments.

    python scripts/horizon_seeds.py --out=DIR H=REPORT[,REPORT...] [H=...]

Each H=REPORT,... names one horizon (a multiple of the students' steps) and the report directories (each
holding the results.json an experiment wrote) of its runs with disjoint seeds, e.g. seed 0 of the study and
seeds 1 and 2 added later. Writes DIR/<H>x/results.json (the seeds combined: salt_jax.experiment.horizon.combine),
DIR/horizon.md and DIR/horizon.png (salt_jax.experiment.horizon.markdown and plot).
"""

import json
import os
import sys

from absl import app, flags

from salt_jax import paths
from salt_jax.cli import fail
from salt_jax.errors import UserError
from salt_jax.experiment import horizon

_OUT = flags.DEFINE_string("out", "", "Directory for the combined results.json per horizon, horizon.md and .png.")


def main(argv):
    if not _OUT.value or len(argv) < 2:
        fail("usage: python scripts/horizon_seeds.py --out=DIR H=REPORT[,REPORT...] [H=...]")
    combined = {}
    try:
        for spec in argv[1:]:
            h, _, reports = spec.partition("=")
            if not h.isdigit() or not reports:
                raise UserError(f"{spec}: write a horizon as H=REPORT[,REPORT...], e.g. 2=docs/demo/horizon/2x")
            parts = []
            for report in reports.split(","):
                path = os.path.join(report, "results.json")
                if not os.path.isfile(path):
                    raise UserError(f"{path}: no such file; name the directories the experiments wrote reports to")
                with open(path) as fh:
                    parts.append(json.load(fh))
            combined[int(h)] = horizon.combine(parts)
    except UserError as e:
        fail(str(e))
    for h, results in combined.items():
        paths.makedirs(os.path.join(_OUT.value, f"{h}x"))
        paths.write_json(os.path.join(_OUT.value, f"{h}x", "results.json"), results)
    rows = horizon.summary(combined)
    horizon.plot(rows, _OUT.value)
    command = "python scripts/horizon_seeds.py " + " ".join(sys.argv[1:])
    paths.write_atomic(os.path.join(_OUT.value, "horizon.md"), horizon.markdown(rows, command).encode())
    print(f"horizon study, all seeds: {os.path.join(_OUT.value, 'horizon.md')}")


if __name__ == "__main__":
    app.run(main)
