"""The data contract's harder cases, on data made here: a high-cardinality text column is checked, not skipped; a text
column partly made of numbers is refused when the schema is inferred; a change of the champion's schema (a column
added, too) is refused unless a pinned schema or `prepare.schema_evolution` allows it, and then it is reported as a
warning; `mlops-nb params check` and collect check every column params.yaml names; a failure keeps the last good
quality report inside metrics/data_quality.json."""
import json

import numpy as np, pandas as pd, pytest

from mlops_nb.core import DataError
from mlops_nb.data import Schema
from mlops_nb.steps import run_collect, run_prepare
from conftest import merge, run
from test_data_contract import CLS, _in_own_folder, champion, classification_parquet, kept_tree, params_for   # noqa: F401 (fixtures)

def merchants_parquet(path, n=6000, seed=0):
    "Payments with a long-tailed `merchant` column (about 2,000 distinct values in 6,000 rows), target `y`."
    rng = np.random.default_rng(seed)
    w = 1 / np.arange(1, 3001) ** 0.8
    merchant = [f'm{i}' for i in rng.choice(3000, n, p=w / w.sum())]
    amount = rng.gamma(2, 30, n).round(2)
    y = (rng.random(n) < 1 / (1 + np.exp(-(amount - 60) / 20))).astype(int)
    pd.DataFrame({'payment': [f'p{i}' for i in range(n)], 'merchant': merchant, 'amount': amount, 'y': y}).to_parquet(path, index=False)
    return path

PAY = {'task': {'type': 'classification', 'target': 'y', 'time_column': '', 'id_columns': ['payment']},
       'collect': {'days': 0}, 'prepare': {'features': {}}}

# --- a high-cardinality text column ------------------------------------------------------------------------------

def test_a_high_cardinality_column_keeps_its_most_frequent_values_and_their_share(tmp_path):
    f = merchants_parquet(tmp_path/'pay.parquet')
    col = Schema.infer(pd.read_parquet(f)).columns['merchant']
    assert len(col.categories) == 1000 and 0.5 < col.domain_mass < 0.95   # not `None`: the share of unseen values is still checked

def test_a_flood_of_new_values_in_a_column_of_more_than_1000_values_stops_collect(tmp_path):
    d = tmp_path
    df = pd.read_parquet(merchants_parquet(d/'pay.parquet'))
    late = df.index[len(df) // 2:]
    flood = late[::2]                                                   # half the newer rows: merchants never seen
    df.loc[flood, 'merchant'] = [f'x{i}' for i in range(len(flood))]
    df.to_parquet(d/'pay.parquet', index=False)
    p = params_for(PAY, d/'pay.parquet')
    kept = kept_tree(d)
    with pytest.raises(DataError) as e: run_collect(p, d/'data/raw', d/'metrics/data_quality.json')
    msg = str(e.value)
    assert f"{d/'pay.parquet'}: column 'merchant' breaks rule 'unseen_categories'" in msg, msg
    assert e.value.count > (df.index[int(len(df) * 0.65):].isin(flood)).sum()   # every new merchant after the reference window, and more
    assert kept_tree(d) == kept
    assert not (d/'data/raw').exists() and json.loads((d/'metrics/data_quality.json').read_text())['stage'] == 'collect'

def test_a_high_cardinality_id_column_is_not_a_category(tmp_path):
    "The same long-tailed column passes once it is declared an id: new ids are expected."
    f = merchants_parquet(tmp_path/'pay.parquet')
    p = params_for(merge(PAY, {'task': {'id_columns': ['payment', 'merchant']}}), f)
    run_collect(p, tmp_path/'raw')
    assert run_prepare(p, tmp_path/'raw', tmp_path/'prepared', tmp_path/'q.json').ok
    strict = params_for(PAY, f)   # not declared: its tail of values unseen in the reference window is refused, by default
    with pytest.raises(DataError) as e: run_collect(strict, tmp_path/'raw2')
    assert "column 'merchant' breaks rule 'unseen_categories'" in str(e.value)

# --- a text column partly made of numbers ------------------------------------------------------------------------

def test_a_number_column_mostly_text_is_refused_not_made_categorical(tmp_path):
    df = pd.read_parquet(classification_parquet(tmp_path/'churn.parquet'))
    df['monthly_charges'] = df['monthly_charges'].astype(object)
    df.loc[df.index[:400], 'monthly_charges'] = 'unknown'              # two thirds text: the kind would be inferred categorical
    f = tmp_path/'churn.csv'
    df.to_csv(f, index=False)
    p = params_for(CLS, f)
    with pytest.raises(DataError) as e: run_collect(p, tmp_path/'raw', tmp_path/'quality.json')
    msg = str(e.value)
    assert f"{f}: column 'monthly_charges' breaks rule 'mixed_kinds': 200 of 600 rows (numbers and text in one column: 33% of its values are numbers" in msg, msg
    assert not (tmp_path/'raw').exists()
    # a pinned schema that declares the column categorical is the user's decision: the rule leaves it alone
    schema = Schema.infer(pd.read_csv(f, dtype={'monthly_charges': str}), target='churned', id_columns=['customer'])
    schema.save(tmp_path/'schema.json')
    pinned = merge(p, {'prepare': {'schema': str(tmp_path/'schema.json')}})
    run_collect(pinned, tmp_path/'raw')
    assert run_prepare(pinned, tmp_path/'raw', tmp_path/'prepared', tmp_path/'quality.json').ok

# --- the champion's schema: pinned and added columns ------------------------------------------------------------

def test_an_added_column_is_a_change_of_the_contract(champion, tmp_path):
    d, p = champion
    f = tmp_path/'churn.parquet'
    pd.read_parquet(d/'churn.parquet').assign(region='eu').to_parquet(f, index=False)
    q = dict(p, collect=dict(p['collect'], sources=[{'type': 'file', 'path': str(f)}]))
    kept = kept_tree(d)
    with pytest.raises(DataError) as e: run_collect(q, d/'data/raw', d/'metrics/data_quality.json')
    assert (f"{f}: column 'region' breaks rule 'new_column' (column added: not in champion v0001's schema "
            "(to accept it: prepare.schema_evolution: allow, or a reviewed prepare.schema))") in str(e.value), str(e.value)
    assert kept_tree(d) == kept
    allowed = merge(q, {'prepare': {'schema_evolution': 'allow'}})
    run_collect(allowed, tmp_path/'raw')
    res = run_prepare(allowed, tmp_path/'raw', tmp_path/'prepared', tmp_path/'q.json')
    warned = [v for r in res.reports for v in r.violations if v['rule'] == 'new_column']
    assert res.ok and [(v['column'], v['severity']) for v in warned] == [('region', 'warning')]
    assert warned[0]['detail'].endswith('(allowed: prepare.schema_evolution: allow)')

def test_a_pinned_schema_lets_a_reviewed_change_through_and_reports_it(champion, tmp_path):
    "The team reviewed a schema without `plan`: it is the new contract; the difference from the champion stays in the report."
    d, p = champion
    f = tmp_path/'churn.parquet'
    df = pd.read_parquet(d/'churn.parquet').drop(columns=['plan'])
    df.to_parquet(f, index=False)
    Schema.infer(df, target='churned', id_columns=['customer']).save(tmp_path/'reviewed.json')
    q = dict(p, collect=dict(p['collect'], sources=[{'type': 'file', 'path': str(f)}]))
    with pytest.raises(DataError): run_collect(q, tmp_path/'raw')          # refused without the pinned schema
    pinned = merge(q, {'prepare': {'schema': str(tmp_path/'reviewed.json')}})
    run_collect(pinned, tmp_path/'raw')
    res = run_prepare(pinned, tmp_path/'raw', tmp_path/'prepared', tmp_path/'q.json')
    changes = [v for r in res.reports for v in r.violations if v['rule'] == 'schema_change']
    assert res.ok and [(v['column'], v['severity']) for v in changes] == [('plan', 'warning')]
    assert f"(allowed: prepare.schema pins {tmp_path/'reviewed.json'})" in changes[0]['detail']
    q_report = json.loads((tmp_path/'q.json').read_text())
    assert q_report['ok'] and q_report['warnings'] >= 1

# --- the columns params.yaml names -----------------------------------------------------------------------------

def test_params_check_and_collect_name_columns_the_data_lacks(champion, tmp_path):
    d, p = champion
    import yaml
    bad = merge(p, {'monitor': {'alerts': {'features': ['plan', 'age']}}, 'prepare': {'features': {'log': ['monthly_charge']}}})
    (tmp_path/'params.yaml').write_text(yaml.safe_dump(bad))
    r = run(f"mlops-nb params check --params {tmp_path/'params.yaml'} --raw {d/'data/raw'}", tmp_path, check=False)
    out = r.stdout + r.stderr
    assert r.returncode == 2 and '2 problems' in out, out
    assert f"prepare.features.log: names 'monthly_charge', not a column of the data in {d/'data/raw'}" in out
    assert f"monitor.alerts.features: names 'age', not a column of the data in {d/'data/raw'}" in out
    before = run(f"mlops-nb params check --params {tmp_path/'params.yaml'} --raw {tmp_path/'none'}", tmp_path)   # nothing collected yet:
    assert before.stdout.strip() == f"{tmp_path/'params.yaml'}: ok"                                               # only the keys are checked
    # collect stops on them before any work: data/raw keeps the champion's window
    kept = kept_tree(d)
    with pytest.raises(DataError) as e: run_collect(bad, d/'data/raw', d/'metrics/data_quality.json')
    assert "monitor.alerts.features names 'age'" in str(e.value) and "prepare.features.log names 'monthly_charge'" in str(e.value), str(e.value)
    assert kept_tree(d) == kept

# --- a failure keeps the last good quality report --------------------------------------------------------------

def test_a_failure_is_recorded_and_the_last_good_quality_report_kept(tmp_path):
    f = classification_parquet(tmp_path/'churn.parquet')
    p = params_for(CLS, f)
    q = tmp_path/'metrics/data_quality.json'
    run_collect(p, tmp_path/'raw', q)
    run_prepare(p, tmp_path/'raw', tmp_path/'prepared', q)
    good = json.loads(q.read_text())
    assert good['ok'] and good['rows'] == 600
    for attempt in range(2):   # a second failure keeps the same last good report, not the first failure
        with pytest.raises(DataError): run_prepare(merge(p, {'task': {'target': 'churn'}}), tmp_path/'raw', tmp_path/'prepared', q)
        rec = json.loads(q.read_text())
        assert rec['ok'] is False and rec['stage'] == 'prepare' and "task.target names 'churn'" in rec['error']['message']
        assert rec['last_good'] == good
