"""`protege export`: Merge, convert to GGUF, quantize, verify, write Modelfiles."""

from __future__ import annotations

import argparse

from protege.commands._common import add_config_args

HELP = "Merge, convert to GGUF, quantize, verify, write Modelfiles"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_args(p)
    p.add_argument("--bundle", action="store_true",
                   help="also write an offline edge bundle (directory + tarball: GGUF, index, config, launcher)")


def run(args: argparse.Namespace) -> int:
    from protege.api import Assistant
    from protege.commands._common import load

    cfg, paths = load(args)
    report = Assistant(cfg, paths).export(bundle=args.bundle).raw
    ver = report["verification"]
    parity = ver["parity_hf_vs_f16"]
    print(f"exported {cfg.name} in {report['seconds']} s -> {paths.gguf}")
    print(f"  merge: {report['merge']['choice']}  val loss {report['merge']['val_loss']}")
    print(f"  parity HF vs {cfg.export.outtype}: top-1 {parity['top1_agreement']:.3f} over {parity['positions']} "
          f"positions (gate {parity['min_top1']})")
    for quant, info in report["files"].items():
        ppl = ver["perplexity"].get(quant)
        q = ver["quants"].get(quant)
        extra = f"  ppl {ppl:.2f}" if ppl else ""
        if q:
            extra += f" ({q['ppl_increase_vs_f16']:+.1%} vs {cfg.export.outtype})"
        print(f"  {info['file']}  {info['bytes'] / 2**20:.1f} MiB{extra}")
    print(f"  Modelfiles: {', '.join(str(paths.modelfile(q).name) for q in report['files'])}")
    if report.get("bundle"):
        print(f"  bundle: {report['bundle']['tarball']}")
    return 0
