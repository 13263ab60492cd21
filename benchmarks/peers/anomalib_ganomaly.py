"""anomalib's GANomaly on the shared splits (run with .venv-peers: torch 2.14.1, anomalib 2.7.0).

Same image size, batch, epochs and seed as ours; anomalib's default GANomaly settings otherwise
(n_features 64, latent 100, its own ImageNet-normalising pre-processor at 32×32). No validation
split (anomalib would otherwise take it from the test folder); the final-epoch model scores the test
split with its raw score, mean((z − ẑ)²).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
warnings.filterwarnings("ignore")
from common import BATCH, EPOCHS, ISIZE, OUT, SEEDS, SPLITS, split_names  # noqa: E402


def auroc(y: np.ndarray, s: np.ndarray) -> float:
    from scipy.stats import rankdata

    r = rankdata(s)
    pos = y == 1
    return float((r[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * (~pos).sum()))


def main() -> None:
    from anomalib.data import Folder
    from anomalib.engine import Engine
    from anomalib.models import Ganomaly
    from lightning.pytorch import seed_everything

    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    if threads:
        torch.set_num_threads(threads)
    OUT.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in SEEDS:
        for name in split_names():
            z = np.load(SPLITS / f"{name}_s{seed}.npz")
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                root = Path(tmp)
                for sub, imgs in (("train/good", z["train"]), ("test/good", z["test"][z["test_labels"] == 0]),
                                  ("test/bad", z["test"][z["test_labels"] == 1])):
                    (root / sub).mkdir(parents=True)
                    for i, img in enumerate(imgs):
                        cv2.imwrite(str(root / sub / f"{i:05d}.png"), img)
                seed_everything(seed, workers=True)
                dm = Folder(name=name, root=root, normal_dir="train/good", abnormal_dir="test/bad", normal_test_dir="test/good",
                            train_batch_size=BATCH, eval_batch_size=BATCH, num_workers=0, val_split_mode="none", seed=seed)
                model = Ganomaly(batch_size=BATCH, pre_processor=Ganomaly.configure_pre_processor((ISIZE, ISIZE)),
                                 evaluator=False, visualizer=False)
                engine = Engine(max_epochs=EPOCHS, accelerator="cpu", devices=1, logger=False, default_root_dir=str(root / "results"),
                                enable_progress_bar=False, num_sanity_val_steps=0, limit_val_batches=0)
                engine.fit(model=model, datamodule=dm)
                model.eval()
                test = z["test"][:, :, :, ::-1].copy()  # BGR -> RGB as anomalib loads
                x = torch.from_numpy(test).permute(0, 3, 1, 2).float() / 255.0
                with torch.no_grad():
                    x = model.pre_processor.transform(x)
                    scores = np.concatenate([model.model(x[i : i + 256]).pred_score.numpy() for i in range(0, len(x), 256)])
            row = {"data": name, "seed": seed, "model": "anomalib GANomaly", "auroc": {"anomalib": auroc(z["test_labels"], scores)},
                   "seconds": round(time.perf_counter() - t0, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            (OUT / "anomalib.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
