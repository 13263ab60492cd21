"""Tables of the synthetic-validation study (benchmarks/synthval_study.py) → benchmarks/results/synthval_study.{md,json}.

Usage: python benchmarks/synthval_table.py
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from common import RESULTS, stamp

from skipgan_edge.metrics import spearman

OUT = Path(__file__).resolve().parent / "peers" / "out"
DEFAULT_SCORE = "default (standardized λ0.5, max-pooled 3x3)"
PAPER_MODEL = "skip all (paper)"  # the default before this study
DEFAULT_MODEL = "skip 4"  # the innermost skip only: the default this study adopted (ModelConfig.skip_levels = "innermost")
GROUPS = {"semantic (Fashion-MNIST)": "fmnist", "local defects (textures)": "texture"}


def group_of(data: str) -> str:
    return next(g for g, prefix in GROUPS.items() if data.startswith(prefix))


def ms(xs: list[float]) -> str:
    return f"{np.mean(xs):.3f} ± {np.std(xs):.3f}" if xs else "-"


def main() -> None:
    rows = [r for f in sorted(OUT.glob("synthval*.json")) for r in json.loads(f.read_text())]
    rows = list({(r["data"], r["seed"], r["model"]): r for r in rows}.values())
    datasets = sorted({r["data"] for r in rows})
    seeds = sorted({r["seed"] for r in rows})
    models = list(dict.fromkeys(r["model"] for r in rows))
    by = {(r["data"], r["seed"], r["model"]): r for r in rows}
    res: dict[str, object] = {"benchmark": "synthval_study", "date": stamp(), "rows": len(rows), "datasets": datasets, "seeds": seeds}
    md = ["# Synthetic-defect validation, threshold policies and UNet skip levels", "",
          f"{len(rows)} trained models: {len(datasets)} splits × {len(seeds)} seeds × {len(models)} model variants "
          "(isize 32, ngf 32, 6 epochs, 1,500 normal training images per split, final-epoch weights; the peers harness's splits). "
          "Synthetic anomalies are made from each split's *normal* validation images (`skipgan_edge/data/synthval.py`); "
          "labelled validation anomalies are ignored. Test data is only used to report.", "",
          "Commands: `python benchmarks/peers/splits.py`, then `python benchmarks/synthval_study.py` (one process per seed: "
          "`PEERS_SEEDS=0 python benchmarks/synthval_study.py --out synthval_s0.json`, ...), then "
          "`python benchmarks/synthval_table.py`.", ""]

    # ---------------------------------------------------------------- 1. threshold policies
    md += ["## 1. Threshold policies (default score; the adopted default model and the paper's generator)", "",
           "Each policy sets the threshold on validation, then the test split is scored: F1 at that threshold, recall, and the "
           "false-alarm rate reached on the test normals against the one promised (the policy's expected FPR on validation). "
           "Mean ± std over splits and seeds. With 64 normal validation images (the textures) `fpr:0.01` cannot be promised "
           "(99 are needed) and falls back to max-normal.", "",
           "| model | data | policy | test F1 | test recall | test FPR | promised FPR | fell back to max-normal |",
           "|---|---|---|---|---|---|---|---|"]
    pol_out: dict[str, dict[str, dict[str, float]]] = {}
    for model, group in [(m, g) for m in (DEFAULT_MODEL, PAPER_MODEL) for g in [*GROUPS, "all"]]:
        for pol in ("max-normal", "fpr:0.01", "fpr:0.05", "f1"):
            sel = [by[(d, s, model)]["policies"][pol] for d in datasets for s in seeds
                   if (d, s, model) in by and (group == "all" or group_of(d) == group)]
            if not sel:
                continue
            agg = {k: float(np.mean([x[k] for x in sel])) for k in ("test_f1", "test_recall", "test_fpr", "promised_fpr")}
            pol_out.setdefault(f"{model} / {group}", {})[pol] = agg
            fb = sum(bool(x.get("fell_back_to_max_normal")) for x in sel)
            md.append(f"| {model} | {group} | {pol} | {ms([x['test_f1'] for x in sel])} | {ms([x['test_recall'] for x in sel])} | "
                      f"{ms([x['test_fpr'] for x in sel])} | {ms([x['promised_fpr'] for x in sel])} | {fb}/{len(sel)} |")
    res["policies"] = pol_out

    # ---------------------------------------------------------------- 2. do synthetic ranks agree with real ones?
    md += ["", "## 2. Do ranks on synthetic defects agree with ranks on real anomalies?", "",
           "For each split and seed, every (model variant × score variant) configuration has an AUROC on synthetic validation "
           "and one on the real test anomalies; the Spearman rank correlation between the two, over configurations, says "
           "whether choosing by synthetic validation would choose well. Then the three choices the issue names, each against "
           "today's default, by test AUROC.", "",
           "| data | Spearman(synthetic, real) over configurations | configurations |", "|---|---|---|"]
    rho: dict[str, list[float]] = defaultdict(list)
    for d in datasets:
        for s in seeds:
            syn, real = [], []
            for m in models:
                r = by.get((d, s, m))
                if r is None:
                    continue
                for v in r["scores"].values():
                    syn.append(v["syn_auroc"])
                    real.append(v["test_auroc"])
            if len(syn) >= 3:
                c = spearman(np.array(syn), np.array(real))
                rho[d].append(c)
                rho[group_of(d)].append(c)
                rho["all"].append(c)
    for key in [*datasets, *GROUPS, "all"]:
        if rho.get(key):
            md.append(f"| {key} | {ms(rho[key])} | {len(models) * 7} per split and seed |")
    res["spearman_synthetic_vs_real"] = {k: [float(np.mean(v)), float(np.std(v)), len(v)] for k, v in rho.items()}

    # choices made on synthetic validation vs the defaults
    choices: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for d in datasets:
        for s in seeds:
            base = by.get((d, s, DEFAULT_MODEL))
            gan = by.get((d, s, "ganomaly"))
            if base is None:
                continue
            g = group_of(d)
            default_auc = base["scores"][DEFAULT_SCORE]["test_auroc"]
            lam_key = next(k for k in base["scores"] if k.startswith("standardized λ on synthetic"))
            for grp in (g, "all"):
                choices[grp]["default"].append(default_auc)
                choices[grp]["λ on synthetic"].append(base["scores"][lam_key]["test_auroc"])
                # score mode chosen on synthetic validation among the score variants
                best_score = max(base["scores"], key=lambda k: base["scores"][k]["syn_auroc"])
                choices[grp]["score variant on synthetic"].append(base["scores"][best_score]["test_auroc"])
                if gan is not None:
                    pick = gan if gan["scores"][DEFAULT_SCORE]["syn_auroc"] > base["scores"][DEFAULT_SCORE]["syn_auroc"] else base
                    choices[grp]["--arch auto on synthetic"].append(pick["scores"][DEFAULT_SCORE]["test_auroc"])
                    choices[grp]["ganomaly"].append(gan["scores"][DEFAULT_SCORE]["test_auroc"])
                    choices[grp]["oracle arch (test)"].append(max(default_auc, gan["scores"][DEFAULT_SCORE]["test_auroc"]))
    md += ["", "| data | choice | test AUROC (mean ± std over splits and seeds) | Δ vs default |", "|---|---|---|---|"]
    for grp, ch in choices.items():
        for name, xs in ch.items():
            delta = float(np.mean(np.array(xs) - np.array(ch["default"][: len(xs)]))) if len(xs) == len(ch["default"]) else float("nan")
            md.append(f"| {grp} | {name} | {ms(xs)} | {delta:+.3f} |")
    res["choices"] = {g: {k: [float(np.mean(v)), float(np.std(v))] for k, v in ch.items()} for g, ch in choices.items()}

    # ---------------------------------------------------------------- 3. skip levels
    md += ["", "## 3. Which UNet levels keep their skip", "",
           "Test AUROC, mean ± std over the 3 seeds (each split), then the group mean; level 1 is the full-resolution skip "
           "(16×16 at isize 32), level 4 the innermost (2×2). Default score, paper score and the reconstruction term alone.", ""]
    skip_out: dict[str, dict[str, dict[str, list[float]]]] = {}
    for score in (DEFAULT_SCORE, "paper (λ0.9 raw)", "rec only"):
        md += [f"**{score}**", "", "| model | " + " | ".join(datasets) + " | " + " | ".join(GROUPS) + " |",
               "|---|" + "---|" * (len(datasets) + len(GROUPS))]
        for m in models:
            cells, grp_vals = [], defaultdict(list)
            for d in datasets:
                xs = [by[(d, s, m)]["scores"][score]["test_auroc"] for s in seeds if (d, s, m) in by]
                cells.append(ms(xs))
                for s in seeds:
                    if (d, s, m) in by:
                        grp_vals[group_of(d)].append(by[(d, s, m)]["scores"][score]["test_auroc"])
            # the group's seed spread: std over seeds of the per-seed group means
            gcells = []
            for g in GROUPS:
                per_seed = [np.mean([by[(d, s, m)]["scores"][score]["test_auroc"] for d in datasets if group_of(d) == g and (d, s, m) in by])
                            for s in seeds if any((d, s, m) in by for d in datasets if group_of(d) == g)]
                gcells.append(ms([float(x) for x in per_seed]))
                skip_out.setdefault(score, {}).setdefault(m, {})[g] = [float(x) for x in per_seed]
            md.append(f"| {m} | " + " | ".join(cells) + " | " + " | ".join(gcells) + " |")
        md.append("")
    res["skip_levels"] = skip_out
    md += ["**Against the paper's generator (every skip), default score, by group:** the best variant and whether it beats "
           "the paper's beyond the seed spread (its mean minus its std above the paper's mean plus its std).", ""]
    for g in GROUPS:
        scores = {m: v[g] for m, v in skip_out[DEFAULT_SCORE].items() if v.get(g)}
        best = max(scores, key=lambda m: np.mean(scores[m]))
        b, p = scores[best], scores.get(PAPER_MODEL, [])
        beyond = bool(p) and np.mean(b) - np.std(b) > np.mean(p) + np.std(p)
        md.append(f"- {g}: best **{best}** {ms(b)} vs {PAPER_MODEL} {ms(p)}: " + ("beyond the seed spread" if beyond else "within it"))
    md.append("")
    (RESULTS / "synthval_study.json").write_text(json.dumps(res, indent=1))
    (RESULTS / "synthval_study.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
