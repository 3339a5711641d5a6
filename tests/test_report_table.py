"""report.results_table: the paper-style table, with seed spread and change vs Base."""

from girl_jax import report


def test_results_table_shows_mean_std_and_relative_change():
    rec = {
        "Base": {"mlp": {"auc": 0.8, "logloss": 0.5, "auc_std": 0.001, "logloss_std": 0.002}},
        "GIRL": {"mlp": {"auc": 0.82, "logloss": 0.45, "auc_std": 0.003, "logloss_std": 0.004}},
    }
    lines = report.results_table(rec).splitlines()
    assert lines[0] == "| feature set | MLP AUC | MLP LogLoss |"
    assert lines[2] == "| Base | 0.8000 ± 0.0010 | 0.5000 ± 0.0020 |"
    assert lines[3] == "| GIRL | 0.8200 ± 0.0030 (+2.5%) | 0.4500 ± 0.0040 (-10.0%) |"
    single = report.results_table({"Base": {"dot": {"auc": 0.7, "logloss": 0.6}}})
    assert single.splitlines()[2] == "| Base | 0.7000 | 0.6000 |"
