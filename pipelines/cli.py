"""`python -m pipelines <stage> [item]`: the commands dvc.yaml runs, one per stage; params come from params.yaml."""
from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

import typer

from pipelines.atomic import exit_cleanly_on_sigterm
from pipelines.config import Params, load_params
from pipelines.layout import Layout
from pipelines.stage_log import record_stage

app = typer.Typer(help="Run one chatgraft stage in the current project directory.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
PARAMS = Path("params.yaml")
# the last line a stage prints for an error in the user's input; the flow shows that line alone
USER_ERROR = "chatgraft error: "


def main() -> None:
    """Run one stage command. An error in the user's input (a bad file, line, key or path: the stages raise
    ValueError or FileNotFoundError naming it) ends its output with one line after the traceback, marked so the
    flow can show it alone."""
    exit_cleanly_on_sigterm()
    try:
        app(prog_name="python -m pipelines")
    except (ValueError, FileNotFoundError) as error:
        traceback.print_exc()
        problems = [line.strip() for line in str(error).splitlines() if line.strip()]
        print(f"{USER_ERROR}{'; '.join(problems)}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def _layout() -> Layout:
    return Layout(Path.cwd())


@app.callback()
def _every_stage() -> None:
    # No model hub is reachable from chatgraft's machines: never wait on one.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    record_stage(sys.argv[1:])


@app.command()
def inputs() -> None:
    """Mirror every input params.yaml names outside the project (checkpoints, eval and SFT sets, task vectors) as
    links under inputs/, which the stages reading them list as deps."""
    from pipelines.inputs import mirror_inputs

    for group, inputs in mirror_inputs(load_params(PARAMS), Path.cwd()).items():
        print(f"inputs/{group}: {', '.join(inputs) or 'none from outside the project'}")


@app.command()
def inbox() -> None:
    """Make the inbox snapshot folder, data/incoming, when there is none (the flow's intake fills it)."""
    _layout().incoming.mkdir(parents=True, exist_ok=True)


@app.command()
def corpus() -> None:
    """Write the corpus into data/corpus: the default world's data sets, or the imported documents (data.source),
    with the documents in data/incoming."""
    from pipelines.corpus.stage import build_corpus

    params, layout = load_params(PARAMS), _layout()
    build_corpus(params.data, layout.corpus, layout.stage_report("corpus"), layout.incoming, layout.documents)


@app.command()
def upstream() -> None:
    """Build the tiny base/chat pair, or verify and record real local ones."""
    from pipelines.upstream.stage import build_upstream

    params, layout = load_params(PARAMS), _layout()
    build_upstream(params.upstream, params.data.world, layout.corpus, layout.upstream,
                   layout.stage_report("upstream_training"), layout.plots, layout.upstream_report)


@app.command()
def cp() -> None:
    """Continually pretrain the base on the target corpus into models/cp."""
    from pipelines.cp import continual_pretrain
    from pipelines.training.distributed import relaunch, under_launcher

    params, layout = load_params(PARAMS), _layout()
    distributed = params.cp.distributed
    if (distributed.processes > 1 or distributed.strategy == "fsdp") and not under_launcher():
        raise typer.Exit(relaunch(distributed, ["cp"]))  # accelerate sets FSDP up under torchrun
    continual_pretrain(params=params.cp, corpus_dir=layout.corpus, upstream_dir=layout.upstream,
                       out_dir=layout.cp_model, metrics_path=layout.stage_report("cp"),
                       curve_csv=layout.plots / "cp_loss.csv", checkpoint_dir=layout.cp_checkpoints,
                       cache_dir=layout.datasets_cache, base_id=params.upstream.base_id)


@app.command()
def merge(ratio: str = typer.Argument(help="merge ratio, as written in merge.ratios")) -> None:
    """Write CP + ratio * (chat - base) into models/merged/alpha-<ratio>."""
    params, layout = load_params(PARAMS), _layout()
    if float(ratio) not in params.merge.ratios:
        raise typer.BadParameter(f"{ratio} is not in merge.ratios {params.merge.ratios}")
    _add_chat_vector(params, layout, layout.cp_model, ratio, layout.merged_model(ratio), layout.merge_report(ratio))


def _add_chat_vector(params: Params, layout: Layout, model: Path, ratio: str, out: Path, report: Path) -> None:
    """Write `model` + ratio * (chat - base) into `out`, with the merge settings of params.yaml."""
    from pipelines.merge.chat_vector import merge_chat_vector
    from pipelines.upstream.manifest import read_upstream

    pair = read_upstream(layout.upstream)
    merge_chat_vector(base=pair.base, chat=pair.chat, cp=model, out=out, ratio=float(ratio), settings=params.merge,
                      report_path=report, hub_ids=params.upstream.hub_ids)


@app.command()
def curate() -> None:
    """Curate the SFT set (align.data, or the corpus stage's) into data/sft, with its report."""
    from pipelines.align.stage import curate_sft_set
    from pipelines.align.sft_set import SFT_FILE

    params, layout = load_params(PARAMS), _layout()
    source = Path(params.align.data) if params.align.data else layout.corpus / SFT_FILE
    report = curate_sft_set(params.align, source, layout.sft_set, layout.stage_report("align/curation")).report
    typer.echo(f"curated {report['input']} examples: kept {report['kept']}, dropped {report['dropped']}")


@app.command()
def pick() -> None:
    """Choose the merged model the align stages tune (the leaderboard's rule over the merged models' scores)."""
    from pipelines.align.pick import pick_merged
    from pipelines.candidates import candidate_dir, merged_name

    params, layout = load_params(PARAMS), _layout()
    picked = pick_merged({merged_name(r): layout.eval_metrics(merged_name(r)) for r in params.merge.ratios},
                         params.promote, layout.stage_report("align/pick"), lambda name: candidate_dir(layout, name))
    typer.echo(f"align tunes {picked}")


@app.command()
def align(method: str = typer.Argument(help="an align method, as written in align.methods")) -> None:
    """Fine-tune the best merged model on the curated SFT set into models/aligned/<method>."""
    from pipelines.align.pick import PICKED
    from pipelines.align.tune import tune_on_sft_set
    from pipelines.candidates import candidate_dir

    params, layout = load_params(PARAMS), _layout()
    if method not in params.align.methods:
        raise typer.BadParameter(f"{method} is not in align.methods {params.align.methods}")
    merged = json.loads(layout.stage_report("align/pick").read_text())[PICKED]
    typer.echo(f"aligning {merged} with {method}")
    tune_on_sft_set(method=method, params=params.align, sft_dir=layout.sft_set, source_name=merged,
                    source_dir=candidate_dir(layout, merged), out_dir=layout.aligned_model(method),
                    metrics_path=layout.stage_report(f"align/train-{method}"),
                    curve_csv=layout.plots / f"align_{method}_loss.csv")


@app.command()
def finetune(method: str = typer.Argument(help="a fine-tuning method, as written in finetune.methods")) -> None:
    """Fine-tune CP on the curated SFT set, with the chat model's template, into models/finetuned/<method>: the
    paper's CP -> FT, before the chat vector is added (merge-finetuned)."""
    from pipelines.align.tune import tune_on_sft_set
    from pipelines.upstream.manifest import read_upstream

    params, layout = load_params(PARAMS), _layout()
    if method not in params.finetune.methods:
        raise typer.BadParameter(f"{method} is not in finetune.methods {params.finetune.methods}")
    tune_on_sft_set(method=method, params=params.align, sft_dir=layout.sft_set, source_name="cp",
                    source_dir=layout.cp_model, out_dir=layout.finetuned_model(method),
                    metrics_path=layout.stage_report(f"align/finetune-{method}"),
                    curve_csv=layout.plots / f"finetune_{method}_loss.csv",
                    template_from=read_upstream(layout.upstream).chat)


@app.command("merge-finetuned")
def merge_finetuned(method: str = typer.Argument(help="as written in finetune.methods"),
                    ratio: str = typer.Argument(help="as written in finetune.ratios")) -> None:
    """Write finetuned + ratio * (chat - base) into models/finetuned-merged/<method>-alpha-<ratio>."""
    params, layout = load_params(PARAMS), _layout()
    if method not in params.finetune.methods or float(ratio) not in params.finetune.ratios:
        raise typer.BadParameter(f"{method} at {ratio} is not in finetune.methods {params.finetune.methods} x "
                                 f"finetune.ratios {params.finetune.ratios}")
    _add_chat_vector(params, layout, layout.finetuned_model(method), ratio,
                     layout.finetuned_merged_model(method, ratio), layout.finetuned_merge_report(method, ratio))


@app.command()
def evaluate(candidate: str = typer.Argument(help="base, chat, cp, merged-<ratio>, aligned-<method> or "
                                             "finetuned-<method>-merged-<ratio>")) -> None:
    """Score one candidate into its metrics file (Layout.eval_metrics), its samples and its speed."""
    from pipelines.candidates import candidate_dir
    from pipelines.evaluate.stage import evaluate_candidate
    from pipelines.upstream.manifest import read_upstream

    params, layout = load_params(PARAMS), _layout()
    evaluate_candidate(model_dir=candidate_dir(layout, candidate), chat_dir=read_upstream(layout.upstream).chat,
                       corpus_dir=layout.corpus, params=params.eval, metrics_path=layout.eval_metrics(candidate),
                       samples_path=layout.eval_samples(candidate), speed_path=layout.speed_report(candidate))


@app.command()
def leaderboard() -> None:
    """Rank the candidates into reports/leaderboard.json and name the winner in metrics/leaderboard.json."""
    from pipelines.leaderboard import build_leaderboard, candidate_names

    params, layout = load_params(PARAMS), _layout()
    board = build_leaderboard({name: layout.eval_metrics(name) for name in candidate_names(params)}, params.promote,
                              layout.leaderboard_report, layout.leaderboard)
    typer.echo(f"winner: {board.winner} ({board.reason})")


@app.command()
def plots() -> None:
    """Draw the run's figures into plots/*.png: the ratio sweep, the candidates side by side, the training curves."""
    from pipelines.leaderboard import candidate_names
    from pipelines.plots import draw_plots

    params, layout = load_params(PARAMS), _layout()
    curves = {"cp_loss": {"cp": layout.plots / "cp_loss.csv"},
              "upstream_loss": {step: layout.plots / f"upstream_{step}_loss.csv" for step in ("pretrain", "chat")},
              "align_loss": {**{method: layout.plots / f"align_{method}_loss.csv" for method in params.align.methods},
                             **{f"CP {method}": layout.plots / f"finetune_{method}_loss.csv"
                                for method in params.finetune.methods}}}
    written = draw_plots({name: layout.eval_metrics(name) for name in candidate_names(params)}, layout.leaderboard,
                         curves, layout.plots)
    typer.echo(f"drew {', '.join(path.name for path in written)}")
