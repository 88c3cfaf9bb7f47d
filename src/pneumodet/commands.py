"""What each ``pneumodet`` command does, given its parsed arguments (the parser is :mod:`pneumodet.cli`).

Each command imports what it needs when it runs, so ``--help`` and errors are fast and ``score`` never loads
torch.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from pneumodet.errors import UserError


def cmd_synth(args) -> None:
    from pneumodet.data.synth import synthesize
    from pneumodet.files import check_output_dir

    check_output_dir(args.out)
    start = time.perf_counter()
    cases = synthesize(args.out, args.train, args.test, args.seed, workers=args.workers, variant=args.variant)
    elapsed = time.perf_counter() - start
    positives = sum(c.annotation.positive for c in cases["train"])
    n = len(cases["train"]) + len(cases["test"])
    print(f"wrote {len(cases['train'])} train ({positives} positive) and {len(cases['test'])} test images "
          f"to {args.out} in {elapsed:.1f} s ({n / max(elapsed, 1e-9):.0f} images/s)")


def cmd_download(args) -> None:
    from pneumodet.io.kaggle import check_complete, download_competition

    if not check_complete(args.out):
        print(f"{args.out}: already complete, nothing to download")
        return
    download_competition(args.out)
    print(f"downloaded the competition to {args.out}")


def cmd_prepare(args) -> None:
    from pneumodet.data.prepare import prepare

    start = time.perf_counter()
    result = prepare(args.data, args.out, size_px=args.size, val_fraction=args.val_fraction, seed=args.seed,
                     groups_csv=args.groups, subset=args.subset, workers=args.workers, folds=args.folds,
                     labels_csv=args.labels)
    summary = result.summary
    state = "reused" if result.reused else f"built in {time.perf_counter() - start:.1f} s"
    problems = sum(summary["problems"].values())
    print(f"{summary['usable']}/{summary['images']} images usable, {summary['positives']} positive, "
          f"{summary['boxes']} boxes; {problems} problem(s) in {result.qc_csv}")
    print(f"cache {state}: {result.cache_dir}")
    if result.split_csv:
        print(f"split: {result.split_csv} ({result.val_images} val images, {result.val_positives} positive; "
              f"val fraction {result.val_fraction:.2f})")


def cmd_train(args) -> None:
    from pneumodet.config_files import load_config

    if args.resume and (args.config or args.overrides):
        raise UserError("--resume continues a run with its own config.yaml: drop --config and --set")
    if not args.resume and args.config is None:
        raise UserError("--config is required (demo, rsna, seed or a YAML file), unless --resume")
    config = None if args.resume else load_config(args.config, args.overrides)
    from pneumodet.training.train import train, train_folds

    if args.folds:
        results = train_folds(config, args.data, args.folds, args.run, resume=args.resume, runs_base=args.runs)
        for n, result in enumerate(results, start=1):
            print(f"fold {n}: best val RSNA mAP {result.best_map:.4f} at epoch {result.best_epoch}/{result.epochs}"
                  f"{_data_wait(result)}")
        print(f"folds: {results[0].run.parent} (pneumodet evaluate it to tune on the out-of-fold predictions)")
        return
    result = train(config, args.data, run=args.run, resume=args.resume, runs_base=args.runs)
    print(f"best val RSNA mAP {result.best_map:.4f} at epoch {result.best_epoch}/{result.epochs}{_data_wait(result)}; "
          f"run: {result.run}")


def cmd_pretrain(args) -> None:
    from pneumodet.config_files import load_config
    from pneumodet.pretrain import pretrain

    config = load_config(args.config, args.overrides)
    work = args.work or Path(f"{args.out}.work")
    result = pretrain(config, args.out, work, images=args.images, seed=args.seed, variants=args.variant)
    print(f"weights: {result.weights} ({result.record['images']} synthetic images of {result.record['variants']}, "
          f"{config.train.steps or config.train.epochs} {'steps' if config.train.steps else 'epochs'}; best val RSNA "
          f"mAP {result.record['best_val_rsna_map']:.4f}); train with --set model.weights={result.weights}; "
          f"{work} can go")


def cmd_distil(args) -> None:
    from pneumodet.distil import distil

    teacher = args.teacher[0] if len(args.teacher) == 1 else args.teacher
    r = distil(teacher, args.images, args.data, args.out, min_score=args.min_score, negative_below=args.negative_below,
               hflip_tta=args.tta, engine=args.engine, workers=args.workers)
    print(f"{r.files} images: {r.positives} pseudo-positive ({r.boxes} boxes at >= {r.min_score:g}), {r.negatives} "
          f"pseudo-negative (score < {r.negative_below:.3g}), {r.left_out} left out (the teacher was not sure), "
          f"{r.unreadable} unreadable, {r.already_labelled} already labelled")
    print(f"cache: {r.cache} ({r.labelled} labelled images, their split kept, + {r.positives + r.negatives} "
          f"pseudo-labelled for training); the student: pneumodet train --config CONFIG --data {r.cache}")


def _data_wait(result) -> str:
    """Say how much of a run's time its steps waited for data (metrics.csv's data_wait_s), where it was kept."""
    share = result.data_wait_share
    return f"; steps waited for data {share:.0%} of the time" if math.isfinite(share) else ""


def cmd_evaluate(args) -> None:
    from pneumodet.evaluate import EXTERNAL, evaluate
    from pneumodet.stats import with_ci

    result = evaluate(args.run, args.data, split=args.split, reuse_predictions=args.reuse, hflip_tta=args.tta,
                      tta_scales=args.tta_scales, box_refine=args.box_refine, box_vote=args.box_vote, name=args.name,
                      retune=args.retune)
    from pneumodet.postprocess import PostProcess

    image, settings = result["image_level"], PostProcess(**result["postprocess"]).describe()
    what = f"external set {result['set']}" if "set" in result else result["split"]
    print(f"{what} RSNA mAP {with_ci(result['rsna_map'], result['rsna_map_ci'])} on {result['n_images']} images "
          f"({result['n_images_counted']} counted; tuned on {result['tuned_on']})")
    if "rsna_map_before_tuning" in result:
        print(f"  before tuning {result['rsna_map_before_tuning']:.4f}; tuned: {settings}")
    else:
        print(f"  post-processing: {settings}")
    if "rsna_map_without_gate" in result:
        print(f"  without the gate: RSNA mAP {result['rsna_map_without_gate']:.4f} (tuned the same way)")
    for fold in result.get("folds", []):
        print(f"  {fold['run']}: RSNA mAP {fold['rsna_map']:.4f} on its {fold['images']} val images")
    print(f"image level ({image['positives']} of {image['images']} images positive): ROC AUC "
          f"{with_ci(image['roc_auc'], image['roc_auc_ci'])}; the call (any box kept): sensitivity "
          f"{with_ci(image['sensitivity'], image['sensitivity_ci'])}, specificity "
          f"{with_ci(image['specificity'], image['specificity_ci'])}, PPV {with_ci(image['ppv'], image['ppv_ci'])}, "
          f"NPV {with_ci(image['npv'], image['npv_ci'])}; TP {image['tp']}, FP {image['fp']}, FN {image['fn']}, "
          f"TN {image['tn']}")
    boxes = result["box_level"]
    print(f"boxes: FROC {_fmt(boxes['froc']['mean_sensitivity'])} (mean sensitivity at 1/8-8 false positives per "
          f"image), COCO AP50 {_fmt(boxes['coco']['ap50'])}, AP[.5:.95] {_fmt(boxes['coco']['ap'])}; ECE gate "
          f"{_fmt((result['calibration']['gate'] or {}).get('ece'))}, boxes {_fmt(result['calibration']['box']['ece'])}")
    for view, m in result["by_view"].items():
        print(f"  {view}: RSNA mAP {with_ci(m['rsna_map'], m['rsna_map_ci'])}, ROC AUC "
              f"{with_ci(m['roc_auc'], m['roc_auc_ci'])}, {m['images']} images")
    boot = result["bootstrap"]
    print(f"intervals: 95 %, {boot['resamples']} bootstrap resamples by {boot['by']} ({boot['units']} drawn each time)")
    where = Path(args.run) / EXTERNAL / result["set"] if "set" in result else Path(args.run)
    print(f"wrote {where / 'metrics.json'}, tables in {where / 'report'} and plots in {where / 'plots'}")


def _fmt(value) -> str:
    return "n/a" if value is None or value != value else f"{value:.3f}"


def cmd_predict(args) -> None:
    from pneumodet.predict import predict_distributed, predict_folder

    overrides = {"score_threshold": args.threshold, "nms_iou": args.nms, "max_boxes": args.max_boxes,
                 "shrink": args.shrink, "gate_threshold": args.gate}
    runs = args.run[0] if len(args.run) == 1 else args.run
    if (args.dicomweb is None) != (args.study is None):
        raise UserError("--dicomweb URL and --study UID go together: the study to pull into IMAGES and predict")
    if args.dicomweb is not None:
        from pneumodet.io.dicomweb import fetch_study

        pulled = fetch_study(args.dicomweb, args.study, args.images)
        print(f"pulled {len(pulled)} radiograph(s) of study {args.study} into {args.images}")
    options = {"overrides": overrides, "hflip_tta": args.tta, "workers": args.workers, "batch_size": args.batch_size,
               "dicom_sr": args.dicom_sr, "engine": args.engine}
    if args.devices * args.num_nodes > 1:
        summary = predict_distributed(runs, args.images, args.out, devices=args.devices, num_nodes=args.num_nodes,
                                      **options)
        if summary is None:  # not rank 0: rank 0 reports
            return
    else:
        summary = predict_folder(runs, args.images, args.out, **options)
    print(f"{summary.images} images ({summary.unreadable} unreadable), {summary.with_boxes} with boxes; "
          f"{summary.postprocess.describe()}")
    print(f"{summary.images / max(summary.seconds, 1e-9):.1f} images/s ({summary.seconds:.1f} s decoding and "
          f"predicting, {summary.backend} engine)")
    print(f"wrote {summary.submission} and {summary.boxes_csv}")
    if summary.dicom_sr is not None:
        print(f"wrote {summary.reports} DICOM Structured Reports in {summary.dicom_sr}")


def cmd_export(args) -> None:
    from pneumodet.checkpoints import fold_runs
    from pneumodet.export import MIN_AGREEMENT, export_run
    from pneumodet.onnx_runtime import cpu_features
    from pneumodet.runs import is_folds

    def verdict(active: bool) -> str:
        return "active" if active else f"not used (below {MIN_AGREEMENT:.0%})"

    rpn_kept = {"outputs": "the RPN head's output convolutions fp32", "head": "the whole RPN head fp32"}
    runs = fold_runs(args.run) if is_folds(args.run) else [args.run]  # a folds folder: each fold's own engine
    for run in runs:
        result = export_run(run, int8=args.int8, calibration=args.calibration, checked=args.check_images)
        check = result.check
        print(f"wrote {result.onnx} ({result.onnx.stat().st_size / 1e6:.1f} MB)")
        print(f"the same image through both: largest output difference {check['max_abs_diff']:.2g}; "
              f"backbone+FPN+RPN head {check['torch_ms']:.0f} ms in PyTorch, {check['onnx_ms']:.0f} ms in ONNX "
              f"Runtime fp32 (CPU: {', '.join(cpu_features())})")
        if result.int8:
            q = result.int8
            print(f"int8 (calibrated on {q['calibration_images']} training images), {rpn_kept['outputs']}: the same "
                  f"boxes as PyTorch on {q['agreement']:.1%} of {q['images']} val images: "
                  f"{verdict(q['active'] and 'rpn_head_agreement' not in q)}")
            if "rpn_head_agreement" in q:
                print(f"int8, {rpn_kept['head']}: the same boxes on {q['rpn_head_agreement']:.1%}: "
                      f"{verdict(q['active'])}")
            print(f"int8 dense part as written ({rpn_kept[q['rpn_fp32']]}): {q['dense_ms']:.0f} ms")
            if "heads_agreement" in q:
                print(f"int8 box head alone (dense part fp32): the same boxes on {q['heads_agreement']:.1%}: "
                      f"{verdict(q['heads_active'])}")
            print(f"engine: {q['engine']}")
    print(f"predict, serve and the Python API now use it for {args.run} (--engine torch to bypass)")


def cmd_score(args) -> None:
    from pneumodet.report.submission import score_submission

    result = score_submission(args.submission, args.labels, against=args.against)
    missing, extra = result["missing_from_submission"], result["not_in_labels"]
    if args.against is not None and result["against"]["missing_from_submission"]:
        gap = (f"{args.against} has no row for {result['against']['missing_from_submission']} of the labelled images "
               "(scored as no box)")
        if args.strict:
            raise UserError(gap)
        print(f"pneumodet score: warning: {gap}", file=sys.stderr)
    if missing or extra:  # a score of 0.0 over a submission for other images is not a result
        gap = (f"the submission has no row for {missing} of the {result['images_in_labels']} labelled images (scored "
               f"as no box) and {extra} row(s) for images the labels do not have")
        if args.strict:
            raise UserError(f"{args.submission}: {gap}")
        print(f"pneumodet score: warning: {gap}; --strict makes this an error", file=sys.stderr)
    print(json.dumps(result, indent=2))


def cmd_compare(args) -> None:
    from pneumodet.compare import compare
    from pneumodet.saved import finite
    from pneumodet.stats import with_ci

    result = compare(args.a, args.b)
    if args.json:
        print(json.dumps(finite(result), indent=2))
        return
    boot = result["bootstrap"]
    print(f"{result['images']} images in both reports ({result['only_in_a']} only in A, {result['only_in_b']} only in "
          f"B); 95 % intervals from {boot['resamples']} paired bootstrap resamples by {boot['by']}")
    for name, title in (("rsna_map", "RSNA mAP"), ("roc_auc", "image-level ROC AUC")):
        m = result[name]
        difference = m["difference"]
        low_high = m["difference_ci"]
        verdict = "" if low_high is None else (" (A better)" if low_high[0] > 0 else " (B better)" if low_high[1] < 0
                                               else " (no difference shown)")
        print(f"{title}: A {with_ci(m['a'], m['a_ci'])}, B {with_ci(m['b'], m['b_ci'])}; A - B "
              f"{difference:+.3f}" + (f" ({low_high[0]:+.3f} to {low_high[1]:+.3f}){verdict}" if low_high else ""))


def cmd_serve(args) -> None:
    from pneumodet.service.app import serve

    serve(args.run, args.host, args.port, args.max_upload_mb, token=args.token, allow_hosts=args.allow_host,
          max_decodes=args.max_decodes, max_queue=args.max_queue)


def cmd_listen(args) -> None:
    from pneumodet.pacs.node import Peer, listen
    from pneumodet.pacs.spool import Spool

    if args.status:
        if not (args.spool / "inbox").is_dir() or not (args.spool / "outbox").is_dir():
            raise UserError(f"{args.spool}: not a spool of pneumodet listen (no inbox/ and outbox/); give the folder "
                            "a running node uses")
        print(json.dumps(Spool(args.spool).status(), indent=2))
        return
    if (args.send_to is None) == (args.stow is None):
        raise UserError("give one destination for the results: --send-to AE@HOST:PORT (C-STORE) or --stow URL "
                        "(DICOMweb)")
    destination = Peer.parse(args.send_to) if args.send_to else args.stow
    listen(args.run, args.spool, destination=destination, ae_title=args.ae_title, host=args.host, port=args.port,
           allow=args.allow, max_queue=args.max_queue, max_associations=args.max_associations)


def cmd_demo(args) -> None:
    from pneumodet.demo import run_demo

    run_demo(args.out, args.train, args.test, args.overrides)
