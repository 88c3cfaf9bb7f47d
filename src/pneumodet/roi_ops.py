"""Faster CPU forms of the two torchvision ops that dominate inference after the backbone, same results.

In a profile of the R50-FPN int8 engine, ``torchvision::roi_align`` and ``torchvision::nms`` took most of the
time left in torch (docs/benchmarks-history.md):

- :func:`roi_align_gather` is RoIAlign (``aligned=False``, a fixed ``sampling_ratio``, as Mask R-CNN's poolers
  call it) written as one weighted gather: each output bin is the mean of ``sampling_ratio²`` bilinear samples,
  each the weighted sum of four feature-map pixels, so the bin is a weighted sum of at most 16 pixel vectors,
  which ``embedding_bag`` computes over contiguous channels (torchvision's kernel walks every channel for every
  sample). Its gradient is embedding_bag's, faster than torchvision's ``_roi_align_backward`` in training.
  :class:`GatherRoIAlign` uses it in training and inference.
- :func:`top_kept_nms` is ``batched_nms(...)[:top]`` without suppressing boxes that cannot reach the top:
  greedy NMS decides a box from the boxes of its level scored above it only, and every one of those is in any
  prefix of the boxes sorted by score (all levels together) that holds the box. So NMS over such a prefix keeps
  exactly the prefix's share of what NMS over every box keeps; once it keeps ``top`` boxes, a box after the
  prefix, scored below all of them, cannot enter the first ``top``. :class:`TopKeptRPN` uses it for the RPN:
  each level's NMS runs over its share of about ``2 * top`` boxes, in place of its own ``2 * top`` of up to
  2,000 (1,000 at inference).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import boxes as box_ops
from torchvision.ops.poolers import MultiScaleRoIAlign, _convert_to_roi_format, _filter_input, _setup_scales


def _axis(start: torch.Tensor, length: torch.Tensor, steps: torch.Tensor, size: torch.Tensor):
    """Sample positions along one axis, as torchvision's ``bilinear_interpolate`` treats them: returns the low and
    high pixel index, the weight of the high one and whether the sample lies on the map at all, each (R, S);
    ``size`` (R, 1) is each RoI's map extent on this axis. Past the last pixel both indices are the last one, so
    the weights need no special case."""
    p = start[:, None] + length[:, None] * steps[None]
    inside = (p >= -1.0) & (p <= size)
    p = p.clamp(min=0.0)
    low = torch.minimum(p.floor(), size - 1)
    high = torch.minimum(low + 1, size - 1)
    return low.long(), high.long(), p - low, inside


def _table(features: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) → (B·H·W, C) float32, rows contiguous (a reshape alone can return a strided view, which
    embedding_bag reads slowly)."""
    batch, channels = features.shape[:2]
    flat = features.float().reshape(batch, channels, -1)
    if flat.stride(1) == 1:  # channels-last already: a view
        return flat.transpose(1, 2).reshape(-1, channels)
    # one 2-D transpose per image: torch's 2-D transpose copy ran 3x faster than the 4-D permute's here
    return torch.cat([image.t() for image in flat]) if batch > 1 else flat[0].t().contiguous()


def _pool(table: torch.Tensor, rois: torch.Tensor, first_row: torch.Tensor, height: torch.Tensor,
          width: torch.Tensor, scale: torch.Tensor, output_size: tuple[int, int], sampling_ratio: int) -> torch.Tensor:
    """RoIAlign from a table of feature rows: RoI i reads the map whose pixel (0, 0) is row ``first_row[i]``,
    ``height[i]`` × ``width[i]`` pixels at ``scale[i]`` of the image; rois (R, 5) as (batch index unused here,
    x1, y1, x2, y2). Returns (R, C, out_h, out_w) float32 in channels-last memory (each bin's channels
    contiguous, as the gather writes them): a box head that flattens it copies it to (C, out_h, out_w) order,
    and the exported box head takes it as it is (``onnx_export.HeadsExport``)."""
    out_h, out_w = output_size
    count, channels, s = len(rois), table.shape[1], sampling_ratio
    boxes = rois[:, 1:].float() * scale[:, None]
    x1, y1 = boxes[:, 0], boxes[:, 1]
    roi_w = (boxes[:, 2] - x1).clamp(min=1.0)
    roi_h = (boxes[:, 3] - y1).clamp(min=1.0)
    def steps(n: int) -> torch.Tensor:  # where the samples fall, as fractions of the RoI
        return (torch.arange(n, dtype=torch.float32, device=rois.device) + 0.5) / n

    xl, xh, lx, vx = _axis(x1, roi_w, steps(out_w * s), width[:, None].float())
    yl, yh, ly, vy = _axis(y1, roi_h, steps(out_h * s), height[:, None].float())
    base, stride = first_row[:, None, None], width[:, None, None]
    rows_low, rows_high = base + yl[:, :, None] * stride, base + yh[:, :, None] * stride  # (R, Sy, 1)
    index = torch.stack([rows_low + xl[:, None], rows_low + xh[:, None],
                         rows_high + xl[:, None], rows_high + xh[:, None]], -1)  # (R, Sy, Sx, 4)
    wy = torch.stack([1 - ly, ly], -1)[:, :, None, :, None]  # (R, Sy, 1, 2, 1)
    wx = torch.stack([1 - lx, lx], -1)[:, None, :, None, :]  # (R, 1, Sx, 1, 2)
    weight = (wy * wx).reshape(count, out_h * s, out_w * s, 4)
    weight = weight * (vy[:, :, None] & vx[:, None, :])[..., None] / (s * s)
    # one bag per output bin: its s × s samples × 4 pixels
    index = index.view(count, out_h, s, out_w, s, 4).permute(0, 1, 3, 2, 4, 5).reshape(-1, s * s * 4)
    weight = weight.view(count, out_h, s, out_w, s, 4).permute(0, 1, 3, 2, 4, 5).reshape(-1, s * s * 4)
    pooled = F.embedding_bag(index, table, mode="sum", per_sample_weights=weight)
    return pooled.view(count, out_h, out_w, channels).permute(0, 3, 1, 2)


def roi_align_gather(features: torch.Tensor, rois: torch.Tensor, output_size: tuple[int, int],
                     spatial_scale: float, sampling_ratio: int) -> torch.Tensor:
    """``torchvision.ops.roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned=False)``
    for ``sampling_ratio > 0``: features (B, C, H, W), rois (R, 5) as (batch index, x1, y1, x2, y2); returns
    (R, C, output_size[0], output_size[1]) in the features' dtype (computed in float32, as torchvision's op is
    under autocast)."""
    _, channels, height, width = features.shape
    if not len(rois):
        return features.new_zeros((0, channels, *output_size))
    every = torch.ones(len(rois), dtype=torch.int64, device=rois.device)
    pooled = _pool(_table(features), rois, rois[:, 0].long() * (height * width), every * height, every * width,
                   every * spatial_scale, output_size, sampling_ratio)
    return pooled.to(features.dtype)


class GatherRoIAlign(MultiScaleRoIAlign):
    """torchvision's ``MultiScaleRoIAlign`` (same arguments, no weights),
    pooling every level's RoIs in one gather from one table of the levels they use, on the CPU; on another
    device, when tracing, or with an adaptive ``sampling_ratio`` (0) it is torchvision's."""

    def forward(self, x, boxes, image_shapes):
        on_cpu = all(v.device.type == "cpu" for v in x.values())
        if self.sampling_ratio <= 0 or torchvision._is_tracing() or not on_cpu:
            return super().forward(x, boxes, image_shapes)
        features = _filter_input(x, self.featmap_names)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(features, image_shapes, self.canonical_scale,
                                                         self.canonical_level)
        rois = _convert_to_roi_format(boxes)
        dtype, channels = features[0].dtype, features[0].shape[1]
        if not len(rois):
            return features[0].new_zeros((0, channels, *self.output_size))
        levels = self.map_levels(boxes) if len(features) > 1 else torch.zeros(len(rois), dtype=torch.int64)
        used = torch.unique(levels).tolist()
        sizes = torch.tensor([features[k].shape[2:] for k in range(len(features))], dtype=torch.int64)
        starts = torch.zeros(len(features), dtype=torch.int64)
        row = 0
        for k in used:  # each used level's rows follow the last one's
            starts[k] = row
            row += features[k][:, 0].numel()
        height, width = sizes[levels, 0], sizes[levels, 1]
        first_row = starts[levels] + rois[:, 0].long() * height * width
        scale = torch.tensor(self.scales, dtype=torch.float32)[levels]
        table = torch.cat([_table(features[k]) for k in used])
        return _pool(table, rois, first_row, height, width, scale, self.output_size, self.sampling_ratio).to(dtype)


class ContextRoIAlign(GatherRoIAlign):
    """:class:`GatherRoIAlign` over each RoI enlarged ``context`` times about its centre: the box head sees what
    lies around its RoI (where a soft opacity's edge may be), while its regression stays relative to the RoI."""

    def __init__(self, featmap_names, output_size, sampling_ratio, context: float):
        super().__init__(featmap_names, output_size=output_size, sampling_ratio=sampling_ratio)
        self.context = float(context)

    def forward(self, x, boxes, image_shapes):
        return super().forward(x, [enlarge(b, self.context) for b in boxes], image_shapes)


def enlarge(boxes: torch.Tensor, factor: float) -> torch.Tensor:
    """Return (N, 4) xyxy ``boxes`` scaled ``factor`` times about their centres (not clipped: RoIAlign reads
    zeros beyond the image)."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) * (factor / 2)
    return torch.cat([centre - half, centre + half], dim=1)


def top_kept_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou_threshold: float,
                 top: int) -> torch.Tensor:
    """``torchvision.ops.batched_nms(boxes, scores, groups, iou_threshold)[:top]`` as its per-group form computes
    it: the indices of the ``top`` highest-scored boxes NMS keeps (NMS within each group), in decreasing score
    order.

    NMS runs on the ``2 * top`` highest-scored boxes of all groups together (each group's on its own: no
    coordinate offsets, whose float rounding can flip a decision at the IoU threshold), then on 4×, 8× ... as
    many until it keeps ``top`` or has seen every box (see the module's note for why this is exact)."""
    order = torch.argsort(scores, descending=True, stable=True)
    size = min(len(order), 2 * top)
    while True:
        prefix = order[:size]
        prefix_groups = groups[prefix]
        kept = [members[box_ops.nms(boxes[members], scores[members], iou_threshold)]
                for members in (prefix[prefix_groups == group] for group in torch.unique(prefix_groups))]
        kept = torch.cat(kept) if kept else prefix
        if len(kept) >= top or size == len(order):
            return kept[torch.argsort(scores[kept], descending=True, stable=True)][:top]
        size = min(len(order), 2 * size)


class TopKeptRPN(RegionProposalNetwork):
    """torchvision's RPN (a model's class is swapped in place; no weights) whose proposal filtering runs
    :func:`top_kept_nms` in place of ``batched_nms`` followed by ``[:post_nms_top_n]`` on the CPU; the same
    proposals. On another device (where batched_nms runs all levels at once) it is torchvision's."""

    def filter_proposals(self, proposals, objectness, image_shapes, num_anchors_per_level):
        if torchvision._is_tracing() or proposals.device.type != "cpu":
            return super().filter_proposals(proposals, objectness, image_shapes, num_anchors_per_level)
        num_images = proposals.shape[0]
        objectness = objectness.detach().reshape(num_images, -1)
        levels = torch.cat([torch.full((n,), i, dtype=torch.int64, device=proposals.device)
                            for i, n in enumerate(num_anchors_per_level)]).reshape(1, -1).expand_as(objectness)
        top_n = self._get_top_n_idx(objectness, num_anchors_per_level)
        rows = torch.arange(num_images, device=proposals.device)[:, None]
        objectness, levels, proposals = objectness[rows, top_n], levels[rows, top_n], proposals[rows, top_n]
        final_boxes, final_scores = [], []
        for boxes, scores, level, shape in zip(proposals, torch.sigmoid(objectness), levels, image_shapes,
                                               strict=True):
            boxes = box_ops.clip_boxes_to_image(boxes, shape)
            keep = box_ops.remove_small_boxes(boxes, self.min_size)
            boxes, scores, level = boxes[keep], scores[keep], level[keep]
            keep = torch.where(scores >= self.score_thresh)[0]
            boxes, scores, level = boxes[keep], scores[keep], level[keep]
            keep = top_kept_nms(boxes, scores, level, self.nms_thresh, self.post_nms_top_n())
            final_boxes.append(boxes[keep])
            final_scores.append(scores[keep])
        return final_boxes, final_scores
