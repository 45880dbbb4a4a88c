"""Benchmark of the continuous-improvement loop on the default params (the built-in stream), against its baselines.

    .venv/bin/python benchmarks/loop.py [--days 60] [--scenarios abrupt,none] [--write-readme] [--from-results]

For each scenario, in a temporary folder with the project's params.yaml:
  * `abrupt`: the default drift schedule (abrupt drift on sim.drift.day, 60 by default); `none`: the same stream with
    `sim.drift.schedule: none` (no drift), for the false-alarm rate;
  * `mlops-nb loop simulate --days N` walks the days from loop.start_day **through the real service** (`mlops-nb serve`
    on 127.0.0.1, every day's traffic over HTTP, labels posted to /feedback after loop.label_delay_days); its wall time
    includes the first champion's training;
  * `mlops-nb loop baselines` then runs, timed separately, the never-retrained, daily and weekly baselines on the same
    days and traffic: batch-scored in-process, retrained with the first champion's hyper-parameters (no search);
  * the targets are judged from each scenario's metrics.json (see nbs/11_loop.ipynb for the definitions).
Results go to benchmarks/results/loop.json; --write-readme puts the table between the `<!-- bench:loop -->` markers of
nbs/performance.ipynb (and regenerates README.md).
"""
import argparse, json, os, shutil, subprocess, sys, tempfile, time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# numeric libraries at 1 thread: on 2 shared cores, OpenMP's 2 threads per fit oversubscribe the machine (a search took
# 500 s instead of 30 s when the load average was 8)
THREADS = {k: '1' for k in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'NUMEXPR_NUM_THREADS')}
ENV = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", MPLBACKEND='Agg', **THREADS)
SCENARIOS = ('abrupt', 'none')


def load_avg() -> str:
    return ', '.join(f'{x:.2f}' for x in os.getloadavg())


def run(cmd:list[str], cwd:Path) -> float:
    "Run `cmd` in `cwd`; its wall time in seconds (stop with its output if it fails)."
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=ENV)
    if p.returncode: raise SystemExit(f"`{' '.join(cmd)}` failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    (cwd/'bench.log').open('a').write(p.stdout)
    return time.perf_counter() - t


def scenario(name:str, days:int, work:Path) -> dict:
    "Walk `days` days of the loop in scenario `name`, then its baselines; the timings and the metrics per schedule."
    p = yaml.safe_load((ROOT/'params.yaml').read_text())
    if name == 'none': p['sim']['drift'] = dict(p['sim'].get('drift') or {}, schedule='none')
    folder = work/name
    folder.mkdir(parents=True)
    (folder/'params.yaml').write_text(yaml.safe_dump(p, sort_keys=False))
    loop_s = run([str(BIN/'mlops-nb'), 'loop', 'simulate', '--days', str(days), '--params', 'params.yaml', '--root', '.'], folder)
    return summarise(folder, days, loop_s)


def summarise(folder:Path, days:int, loop_s:float|None=None) -> dict:
    """Run the baselines on the days the loop of `folder` walked and summarise it. Without `loop_s` (a run stopped
    before its end, see --stopped) the loop's time is read from the files: params.yaml written, state.json last committed."""
    p = yaml.safe_load((folder/'params.yaml').read_text())
    d = folder/(p.get('loop') or {}).get('dir', 'loop')
    state = json.loads((d/'state.json').read_text())
    if loop_s is None: loop_s = (d/'state.json').stat().st_mtime - (folder/'params.yaml').stat().st_mtime
    base_s = run([str(BIN/'mlops-nb'), 'loop', 'baselines', '--params', 'params.yaml', '--root', '.'], folder)
    return dict(loop_seconds=round(loop_s, 1), baselines_seconds=round(base_s, 1), metrics=json.loads((d/'metrics.json').read_text()),
                promotions=sum(bool((r.get('retrain') or {}).get('promoted')) for r in state['history']),
                initial_seconds=(state.get('initial') or {}).get('seconds'), days_walked=len(state['history']), finished=len(state['history']) >= days)


def best_possible(metrics:dict) -> dict:
    """The best PR AUC any model could reach on the scenario's days: the simulator's true fraud probability as the score
    (`TransactionSimulator.day(d, truth=True)`), pooled over the same days as the schedules', before the drift and from
    the loop's recovery day on. It tells a model's shortfall apart from data that became harder to predict."""
    sys.path.insert(0, str(ROOT))
    import pandas as pd
    from mlops_nb.loop import daily_metric
    from mlops_nb.sim import TransactionSimulator
    p = yaml.safe_load((ROOT/'params.yaml').read_text())
    sim = TransactionSimulator(seed=int(p.get('seed', 0)), **dict(p['sim'], drift=metrics['drift']))
    first, last = metrics['days']
    frame = pd.concat([sim.day(d, truth=True).assign(day=d) for d in range(first, last + 1)], ignore_index=True)
    m = daily_metric(frame, metrics['metric'], metrics.get('smooth_days', 3), p['task']['target'], 'fraud_probability')
    lp = metrics['schedules']['loop']
    onset = lp['onsets'][0] if lp.get('onsets') else None
    rec = None if onset is None or lp.get('days_to_recovery') is None else onset + lp['days_to_recovery']
    r = lambda x: round(float(x), 4)
    return dict(metric_before_drift=r(m[m.index < onset].mean() if onset is not None else m.mean()),
                metric_after_recovery=None if rec is None else r(m[m.index >= rec].mean()), metric_mean=r(m.mean()))


def targets(res:dict, days:int) -> list[tuple[str, str, str, bool|None]]:
    "(target, measured, scenario, met) for each target of the loop that the scenarios run allow to judge."
    out = []
    a = res['scenarios'].get('abrupt')
    n = res['scenarios'].get('none')
    if a:
        s = a['metrics']['schedules']
        lp, nv, dl = s['loop'], s['never'], s['daily']
        d = lp['days_to_detection']
        out.append(('abrupt drift detected within 1 day of its onset', f"{'missed' if d is None else f'{d} day(s)'} (onset day {lp['onsets'][0] if lp['onsets'] else '-'})", 'abrupt', d is not None and d <= 1))
        b, after = lp['metric_before_drift'], lp['metric_after_recovery']
        rel = None if after is None or not b else after / b - 1
        never_rel = None if not b or nv['metric_mean_after_onset'] is None else nv['metric_mean_after_onset'] / b - 1
        out.append(('after recovery, the loop within 5 % of its pre-drift PR AUC; the never-retrained baseline clearly below',
                    (f"loop {b:.3f} before, " + ('not recovered' if after is None else f"{after:.3f} after recovery ({rel:+.1%}, after {lp['days_to_recovery']} days)")
                     + f"; never retrained {never_rel:+.1%} after the onset"
                     + (f"; the best possible (true probability) {bp['metric_before_drift']:.3f} before, {bp['metric_after_recovery']:.3f} after"
                        if (bp := a.get('best_possible')) and bp.get('metric_after_recovery') is not None else '')) if never_rel is not None else 'no pre-drift level', 'abrupt',
                    rel is not None and rel >= -0.05 and never_rel is not None and never_rel < -0.05))
        gap = lp['metric_mean'] - dl['metric_mean']
        out.append(('within 1 PR AUC point of daily retraining, at most a quarter of its retrains',
                    f"loop {lp['metric_mean']:.3f} vs daily {dl['metric_mean']:.3f} mean PR AUC ({100 * gap:+.1f} points); {lp['retrains']} vs {dl['retrains']} retrains",
                    'abrupt', gap >= -0.01 and lp['retrains'] <= dl['retrains'] / 4))
    if n:
        lp = n['metrics']['schedules']['loop']
        out.append(('≤ 1 false alarm per 100 days without drift', f"{lp['false_alarms']} alarm(s) in {lp['quiet_days']} quiet days ({lp['false_alarms_per_100_days']} per 100)",
                    'none', lp['false_alarms_per_100_days'] is not None and lp['false_alarms_per_100_days'] <= 1))
    for k, sc in res['scenarios'].items():
        done = sc.get('finished', True)
        out.append((f'{days} simulated days of the loop in under 10 minutes, through the service',
                    f"{sc['loop_seconds'] / 60:.1f} min (first champion included)" if done else
                    f"stopped unfinished: {sc['days_walked']} of {days} days in {sc['loop_seconds'] / 60:.0f} min", k, done and sc['loop_seconds'] < 600))
    return out


def report(res:dict) -> str:
    days = res['days']
    for sc in res['scenarios'].values():      # computed once, then kept in the results
        if 'best_possible' not in sc and sc['metrics'].get('metric') == 'pr_auc': sc['best_possible'] = best_possible(sc['metrics'])
    busy = max(float(x) for part in res['load'] for x in str(part).replace('/', ',').split(',')) >= 1.5
    lines = [f"Measured by `.venv/bin/python benchmarks/loop.py --days {days} --write-readme`, one run per scenario, on this 2-core machine "
             + (f"shared with other work (load average {res['load'][0]} before, {res['load'][1]} after: the times are those of a busy machine"
                if busy else f"with nothing else running (load average {res['load'][0]} before, {res['load'][1]} after")
             + ("; the scenarios ran as separate runs, merged with `--from-results --merge`" if ' / ' in str(res['load'][0]) else '') + "). "
             f"Default `params.yaml` ({res['transactions_per_day']:,} transactions a day, loop from day {res['start_day']}, labels "
             f"{res['label_delay_days']} days late, sliding window of {res['window_days']} days that after a drift alert starts where the drift began and is refitted as it grows, "
             f"at least {res['min_days_between']} days between retrains); "
             f"`abrupt`: the default abrupt drift from day {res['drift_day']}; `none`: the same stream without drift. The loop serves every "
             "day through `mlops-nb serve` on 127.0.0.1 (real HTTP); its retrains run the project's stages with the full hyper-parameter "
             "search and deploy's gate. The baselines are batch-scored in-process on the same days and traffic and retrained with the first "
             "champion's hyper-parameters (no search). Numeric libraries run at 1 thread. PR AUC per day is pooled over 3 days (a day holds about 20 frauds)."
             + ''.join(f" The `{k}` run was stopped after {sc['days_walked']} of {days} days (`--stopped`): its figures cover the days walked."
                       for k, sc in res['scenarios'].items() if not sc.get('finished', True)), '',
             '| target | measured | scenario | met? |', '|---|---|---|---|']
    for t, m, s, ok in targets(res, days): lines.append(f"| {t} | {m} | {s} | {'**met**' if ok else 'not met'} |")
    lines += ['', '| scenario | schedule | retrains | training s | detection (days) | false alarms / 100 days | PR AUC before drift | worst | days to recovery | after recovery | mean |',
              '|---|---|---|---|---|---|---|---|---|---|---|']
    f = lambda v, p='.3f': '–' if v is None else (format(v, p) if isinstance(v, float) else str(v))
    for k, sc in res['scenarios'].items():
        for name, s in sorted(sc['metrics']['schedules'].items(), key=lambda kv: ['loop', 'never', 'daily', 'weekly'].index(kv[0]) if kv[0] in ('loop', 'never', 'daily', 'weekly') else 9):
            lines.append(f"| {k} | {name} | {s['retrains']} | {f(s['training_seconds'], '.0f')} | {f(s['days_to_detection'])} | {f(s['false_alarms_per_100_days'], '.1f')} | "
                         f"{f(s['metric_before_drift'])} | {f(s['metric_worst'])} | {f(s['days_to_recovery'])} | {f(s.get('metric_after_recovery'))} | {f(s['metric_mean'])} |")
        if (bp := sc.get('best_possible')):
            lines.append(f"| {k} | best possible (true probability) | – | – | – | – | {f(bp['metric_before_drift'])} | – | – | {f(bp['metric_after_recovery'])} | {f(bp['metric_mean'])} |")
    lines += ['', 'Wall times: ' + '; '.join(f"{k}: loop {sc['loop_seconds']:.0f} s (of which the first champion {sc['initial_seconds'] or 0:.0f} s; {sc['promotions']} promotions), baselines {sc['baselines_seconds']:.0f} s"
                                            for k, sc in res['scenarios'].items()) + '. The loop\'s training seconds are the fit of each retrain\'s search '
              'as the registry recorded it; the baselines\' are single fits.']
    return '\n'.join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--days', type=int, default=60)
    ap.add_argument('--scenarios', default=','.join(SCENARIOS))
    ap.add_argument('--write-readme', action='store_true')
    ap.add_argument('--from-results', action='store_true', help='render benchmarks/results/loop.json again instead of measuring')
    ap.add_argument('--keep', help='run in this folder and keep it (default: a temporary folder)')
    ap.add_argument('--out', default=str(ROOT/'benchmarks'/'results'/'loop.json'), help='results file (default: benchmarks/results/loop.json)')
    ap.add_argument('--stopped', nargs='*', default=[], metavar='NAME=FOLDER',
                    help='summarise loop runs stopped before their end (their folder kept with --keep): baselines on the days walked')
    ap.add_argument('--merge', nargs='*', default=[], help='with --from-results: also take the scenarios of these results files (runs made apart)')
    args = ap.parse_args()
    out = Path(args.out)
    if args.stopped:
        res = json.loads(out.read_text()) if out.exists() and args.from_results else dict(days=args.days, load=[load_avg()], scenarios={})
        for item in args.stopped:
            name, folder = item.split('=', 1)
            res['scenarios'][name] = summarise(Path(folder), args.days)
        res['load'] = res['load'][:1] + [load_avg()]
        p = yaml.safe_load((ROOT/'params.yaml').read_text()); lp = p.get('loop') or {}
        res |= dict(transactions_per_day=p['sim']['transactions_per_day'], start_day=lp.get('start_day'), label_delay_days=lp.get('label_delay_days'),
                    window_days=(lp.get('window') or {}).get('days'), min_days_between=lp.get('min_days_between_retrains'), drift_day=(p['sim'].get('drift') or {}).get('day'))
        out.write_text(json.dumps(res, indent=1, default=str) + '\n')
    elif args.from_results:
        res = json.loads(out.read_text())
        for other in args.merge:
            o = json.loads(Path(other).read_text())
            res['scenarios'].update(o['scenarios'])
            res['load'] = [f"{res['load'][0]} / {o['load'][0]}", f"{res['load'][1]} / {o['load'][1]}"]   # each run's, in the order of the files
        if args.merge: out.write_text(json.dumps(res, indent=1, default=str) + '\n')
    else:
        p = yaml.safe_load((ROOT/'params.yaml').read_text())
        lp = p.get('loop') or {}
        res = dict(days=args.days, load=[load_avg()], scenarios={}, transactions_per_day=p['sim']['transactions_per_day'],
                   start_day=lp.get('start_day'), label_delay_days=lp.get('label_delay_days'), window_days=(lp.get('window') or {}).get('days'),
                   min_days_between=lp.get('min_days_between_retrains'), drift_day=(p['sim'].get('drift') or {}).get('day'))
        work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix='mlops-nb-bench-loop-'))
        try:
            for name in args.scenarios.split(','):
                print(f"scenario {name}: {args.days} days ...", flush=True)
                res['scenarios'][name] = scenario(name, args.days, work)
                print(json.dumps({k: v for k, v in res['scenarios'][name].items() if k != 'metrics'}), flush=True)
        finally:
            if not args.keep: shutil.rmtree(work, ignore_errors=True)
        res['load'].append(load_avg())
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(res, indent=1, default=str) + '\n')
    text = report(res)
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=str) + '\n')   # with the best-possible figures report() added
    print(text)
    if args.write_readme:   # README.md is generated from nbs/index.ipynb: the figures go into the notebook, then README
        sys.path.insert(0, str(ROOT))
        from mlops_nb.docs import write_bench
        write_bench('loop', text, ROOT)


if __name__ == '__main__':
    main()
