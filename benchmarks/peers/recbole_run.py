"""Train RecBole's KGNNLS on pre-split atomic files; time each training epoch.

Runs INSIDE the RecBole venv made by recbole.sh (not the project venv):

    .venv-recbole/bin/python recbole_run.py --data DIR --params params.json \
        --anomaly installed|off --out result.json

DIR holds NAME.train.inter, NAME.valid.inter, NAME.test.inter (columns
user_id, item_id, label), NAME.kg and NAME.link, with NAME the folder's name.
params.json holds RecBole config keys (embedding_size, n_iter, ...); they
override the fixed settings below (pre-split files, labelled AUC evaluation,
CPU, no early stopping). Each training epoch (the trainer's ``_train_epoch``,
validation excluded) is timed with perf_counter, together with how busy the
rest of the machine was meanwhile (benchmarks/common.py's Timer).

``--anomaly installed`` keeps RecBole as it is: resolving the model class
(``recbole.utils.get_model``) imports the package
``recbole.model.sequential_recommender``, whose ``sine.py`` calls
``torch.autograd.set_detect_anomaly(True)`` at import time, so every RecBole
run trains with autograd anomaly detection. ``--anomaly off`` switches it off
again after that import. The JSON records the state seen at each epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/common.py
from common import Timer


def rss_mib() -> dict[str, float]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
    return out


def base_config(data: Path, workdir: Path, seed: int) -> dict:
    return {
        "data_path": str(data.parent), "benchmark_filename": ["train", "valid", "test"],
        "load_col": {"inter": ["user_id", "item_id", "label"],
                     "kg": ["head_id", "relation_id", "tail_id"],
                     "link": ["item_id", "entity_id"]},
        # the train file holds the positives; RecBole pairs each with a fresh
        # uniformly drawn negative every epoch (KGNNLS is a pairwise model)
        "train_neg_sample_args": {"distribution": "uniform", "sample_num": 1, "alpha": 1.0,
                                  "dynamic": False, "candidate_num": 0},
        # AUC over the labelled rows of the valid/test files, as given
        "eval_args": {"group_by": "none", "order": "RO", "mode": "labeled"},
        "metrics": ["AUC"], "valid_metric": "AUC", "valid_metric_bigger": True,
        "eval_step": 1, "stopping_step": 10_000,
        "use_gpu": False, "gpu_id": "", "worker": 0, "seed": seed, "reproducibility": True,
        "state": "WARNING", "show_progress": False, "checkpoint_dir": str(workdir / "saved"),
        "save_dataset": False, "save_dataloaders": False,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, type=Path, help="folder NAME/ of atomic files")
    ap.add_argument("--params", required=True, type=Path, help="JSON of RecBole config keys")
    ap.add_argument("--anomaly", choices=["installed", "off"], default="installed")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="write the JSON here (default: stdout)")
    args = ap.parse_args()
    data = args.data.resolve()
    out = args.out.resolve() if args.out else None
    params = json.loads(args.params.read_text())
    t_start = time.perf_counter()

    import torch

    torch.set_num_threads(args.threads)
    import recbole
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_seed

    anomaly = {"after_import": torch.is_anomaly_enabled()}
    workdir = Path(tempfile.mkdtemp(prefix="recbole-run-"))
    os.chdir(workdir)  # RecBole writes log_tensorboard/ and saved/ into the cwd
    sys.argv = sys.argv[:1]  # RecBole's Config also reads --key=value from the command line
    config = Config(model="KGNNLS", dataset=data.name,
                    config_dict={**base_config(data, workdir, args.seed), **params})
    anomaly["after_config"] = torch.is_anomaly_enabled()  # Config resolves the model class
    if args.anomaly == "off":
        torch.autograd.set_detect_anomaly(False)
    init_seed(config["seed"], config["reproducibility"])

    with Timer() as t_data:
        dataset = create_dataset(config)
        train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"], config["reproducibility"])
    with Timer() as t_model:
        model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    anomaly["at_training"] = torch.is_anomaly_enabled()

    epochs: list[dict] = []
    train_epoch, valid_epoch = trainer._train_epoch, trainer._valid_epoch

    def timed_train_epoch(*a, **kw):
        state = torch.is_anomaly_enabled()
        with Timer() as t:
            loss = train_epoch(*a, **kw)
        epochs.append({"seconds": t.seconds, "other_load": t.other_load, "anomaly": state,
                       "loss": float(sum(loss) if isinstance(loss, tuple) else loss),
                       "rss_mib": rss_mib()["VmRSS"],
                       # the LS label table: its lookups setdefault() unseen keys into it
                       "ls_table_size": len(getattr(trainer.model, "interaction_table", ()))})
        return loss

    def timed_valid_epoch(*a, **kw):
        with Timer() as t:
            out = valid_epoch(*a, **kw)
        epochs[-1].update(valid_seconds=t.seconds, val_auc=float(out[0]))
        return out

    trainer._train_epoch, trainer._valid_epoch = timed_train_epoch, timed_valid_epoch
    trainer.fit(train_data, valid_data, verbose=False, saved=True, show_progress=False)
    with Timer() as t_test:
        test = trainer.evaluate(test_data, load_best_model=True, show_progress=False)

    def rows(d) -> int:
        return len(d._dataset)

    result = {
        "peer": "recbole", "recbole_version": recbole.__version__,
        "torch_version": torch.__version__, "torch_threads": torch.get_num_threads(),
        "anomaly_mode": args.anomaly, "anomaly_enabled": anomaly,
        "config": {k: config[k] for k in (
            "embedding_size", "neighbor_sample_size", "aggregator", "n_iter", "reg_weight",
            "ls_weight", "learning_rate", "train_batch_size", "epochs", "learner",
            "weight_decay", "train_neg_sample_args", "eval_args", "seed")},
        "rows": {"train_positives": rows(train_data.general_dataloader), "valid": rows(valid_data),
                 "test": rows(test_data), "users": dataset.user_num, "items": dataset.item_num,
                 "entities": dataset.entity_num, "relations": dataset.relation_num},
        "steps_per_epoch": len(train_data.general_dataloader),
        "epochs": epochs, "best_epoch": 1 + max(range(len(epochs)),
                                                key=lambda i: epochs[i]["val_auc"]),
        "test_auc": float(test["auc"]),
        "data_seconds": t_data.seconds, "model_build_seconds": t_model.seconds,
        "test_seconds": t_test.seconds, "wall_seconds": time.perf_counter() - t_start,
        "rss_mib_end": rss_mib(),
    }
    text = json.dumps(result, indent=2)
    shutil.rmtree(workdir, ignore_errors=True)
    if out:
        out.write_text(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
