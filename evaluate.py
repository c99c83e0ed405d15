"""The seed's command: `./run.sh evaluate.py [--run RUN] [pricegpt evaluate flags]`.

A thin wrapper over `pricegpt evaluate` (which writes RUN/eval/); without --run it uses the most recent run under
runs/. Prints what the seed printed (accuracy, top-5 accuracy, perplexity, cross-entropy loss, parameter count,
model size) for the evaluated split, after the verdicts and the forecast table of `pricegpt evaluate`.
"""

import json
import sys
from pathlib import Path

from pricegpt.cli import main as cli_main
from pricegpt.errors import PriceGPTError


def seed_summary(metrics: dict) -> str:
    model = metrics["tokens"]["model"]
    size = metrics["tokens"]["size"]
    return "\n".join([
        f"accuracy: {model['top1']:.4f}",
        f"top-5 accuracy: {model['top5']:.4f}",
        f"perplexity: {model['perplexity']:.4f}",
        f"cross-entropy loss: {model['loss']:.4f}",
        f"parameters: {size['n_params']:,}",
        f"model size: {size['bytes_fp32'] / 1e6:.2f} MB (fp32), {size['bytes_bf16'] / 1e6:.2f} MB (bf16)",
    ])


def main(argv: list[str]) -> int:
    from pricegpt.runs import latest_run

    run = next((a.split("=", 1)[1] for a in argv if a.startswith("--run=")), None)
    if "--run" in argv[:-1]:
        run = argv[argv.index("--run") + 1]
    if run is None:
        try:
            run = str(latest_run())
        except PriceGPTError as err:
            sys.stderr.write(f"error: {err}\n")
            return 2
        argv = ["--run", run, *argv]
    code = cli_main(["evaluate", *argv])  # prints the verdicts, the forecast table and where the report is
    if code != 0:
        return code
    metrics = json.loads((Path(run) / "eval" / "metrics.json").read_text())
    if metrics["tokens"].get("model") is not None:
        print(seed_summary(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
