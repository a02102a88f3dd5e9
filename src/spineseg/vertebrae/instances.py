"""Split a binary spine mask into vertebrae, ordered along the column.

The mask holds bone only, so neighbouring vertebral bodies are already apart at their discs;
what joins vertebrae are the facet joints between arches (and, in a network's mask, a blurred
disc edge). Distance to the mask's surface separates the two: a body holds a ball of 8–15 mm
radius, a facet contact or a disc bridge almost none. So:

1. body cores (seeds) are the voxels deeper than a fraction of the local maximum depth (local
   along the column, because cervical bodies are half as deep as lumbar ones); the scan's edge is
   not a surface, so the mask is continued beyond it before measuring depth;
2. seeds that span two bodies (a bridged disc) are cut at their narrowest cross-section, and
   small deep spots that are not a body (a thick lamina) are dropped;
3. every mask voxel joins the seed nearest to it along paths inside the mask: an arch is
   nearer its own body through the pedicles than a neighbour's through the facet joints. A
   network's mask often fuses a facet joint into solid bone; with the CT, a path through a thin
   dark gap inside the mask (the joint space) costs more;
4. instances are numbered from the lowest up along the column.

All on the canonical LPS grid: array axes (z, y, x) run inferior→superior, anterior→posterior,
right→left. No torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.graph import MCP_Geometric


@dataclass(frozen=True)
class InstanceConfig:
    """Thresholds in millimetres and millilitres, so they mean the same at 1 mm and at 3 mm."""

    #: A body core is deeper than this fraction of the deepest point within ``window_mm``.
    seed_fraction: float = 0.5
    min_seed_depth_mm: float = 3.0
    window_mm: float = 40.0
    #: Deep spots smaller than this are not a body (a lamina, a pedicle junction).
    min_seed_ml: float = 0.4
    #: A core cut by the scan's first or last slice counts from this share of ``min_seed_ml``
    #: when it lies within ``edge_seed_offset_mm`` (in-plane) of a whole body's core.
    edge_seed_share: float = 0.1
    edge_seed_offset_mm: float = 20.0
    #: With probabilities, seeds keep only voxels the network is at least this sure of.
    seed_probability: float = 0.8
    #: A seed is cut where its cross-section falls below this fraction of the body on either
    #: side, each side at least ``min_body_mm`` tall.
    neck_ratio: float = 0.45
    min_body_mm: float = 8.0
    #: The mask is continued this far beyond the scan's edge before depth is measured.
    edge_pad_mm: float = 15.0
    #: Paths through bone thinner than this cost more per mm (a facet contact is thin).
    thin_mm: float = 5.0
    #: Pieces no seed reaches join the nearest instance within this distance, else are dropped.
    attach_mm: float = 15.0
    #: With the CT: a voxel ``gap_hu`` below a grey closing of radius ``gap_mm`` (a joint space
    #: up to ~5 mm wide) costs up to ``1 + gap_cost`` times more per mm of path (0 = off).
    gap_mm: float = 2.5
    gap_hu: float = 200.0
    gap_cost: float = 30.0
    #: Each vertebra's slab runs between the planes halfway to its neighbours' cores, normal to
    #: the column; outside the slab of the core it comes from, a path costs more per mm, rising
    #: linearly to ``1 + slab_cost`` times at ``slab_margin_mm`` outside (0 = off).
    slab_cost: float = 10.0
    slab_margin_mm: float = 5.0


@dataclass
class Instances:
    """Vertebra instances on a grid: ``labels`` 1..n from the lowest up, 0 background."""

    labels: np.ndarray
    #: The vertebral body of each instance (same numbering): the part the body core's balls fill.
    bodies: np.ndarray
    #: Per instance, (z, y, x) voxel centroid of the whole vertebra and of its body.
    centroids: np.ndarray
    body_centroids: np.ndarray

    @property
    def count(self) -> int:
        return int(self.centroids.shape[0])


def _depth(mask: np.ndarray, spacing_zyx: tuple[float, float, float], pad_mm: float) -> np.ndarray:
    """Distance (mm) to the mask's surface, the scan's border not counting as surface."""
    pad = [int(np.ceil(pad_mm / s)) for s in spacing_zyx]
    padded = np.pad(mask, [(p, p) for p in pad], mode="edge")
    dist = ndimage.distance_transform_edt(padded, sampling=spacing_zyx)
    inner = tuple(slice(p, p + n) for p, n in zip(pad, mask.shape, strict=True))
    return dist[inner].astype(np.float32)


def _seed_threshold(depth: np.ndarray, sz: float, cfg: InstanceConfig) -> np.ndarray:
    per_slice = depth.max(axis=(1, 2))
    size = max(1, round(cfg.window_mm / sz))
    local = ndimage.maximum_filter1d(per_slice, size=size, mode="nearest")
    return np.maximum(cfg.min_seed_depth_mm, cfg.seed_fraction * local)


def _neck(area: np.ndarray, min_rows: int, dip: float) -> int | None:
    """Row of the deepest dip in a cross-section profile that has a body on both sides."""
    best, where = dip, None
    for z in range(min_rows, len(area) - min_rows):
        side = min(area[:z].max(), area[z + 1:].max())
        if side > 0 and area[z] / side < best:
            best, where = area[z] / side, z
    return where


def _split_at_necks(seeds: np.ndarray, n: int, sz: float, cfg: InstanceConfig) -> tuple[
        np.ndarray, int]:
    """Cut seeds at a narrow cross-section between two wide ones: a disc the mask bridges.

    The profile runs along z: the column's curve tilts discs against the axial plane by up to
    ~30 degrees, which flattens the dip but keeps it where the disc is.
    """
    min_rows = max(1, round(cfg.min_body_mm / sz))
    out, count = seeds.copy(), n
    todo = list(range(1, n + 1))
    while todo:
        k = todo.pop()
        box = ndimage.find_objects((out == k).astype(np.uint8))
        if not box:
            continue
        o = box[0]
        part = out[o] == k
        area = ndimage.uniform_filter1d(part.sum(axis=(1, 2)).astype(float),
                                        size=max(1, round(3.0 / sz)))
        z = _neck(area, min_rows, cfg.neck_ratio)
        if z is None:
            continue
        region = out[o]
        region[z][part[z]] = 0  # a one-slice gap keeps the pieces apart for the watershed
        count += 1
        upper = part.copy()
        upper[: z + 1] = False
        region[upper] = count
        todo += [k, count]
    return out, count


def _body_seeds(seeds: np.ndarray, n: int, voxel_ml: float, spacing_yx: tuple[float, float],
                box: tuple[slice, ...], depth_z: int, cfg: InstanceConfig) -> np.ndarray:
    """Which deep spots are vertebral bodies (boolean per label, index 0 = background).

    A body cut by the scan's first or last slice shows only a sliver of its core; such a sliver
    counts when it lies in line with the whole bodies (a sliver of lamina lies behind them).
    """
    sizes = np.bincount(seeds.ravel(), minlength=n + 1) * voxel_ml
    keep = sizes >= cfg.min_seed_ml
    keep[0] = False
    objs = ndimage.find_objects(seeds)
    at_edge = np.zeros(n + 1, dtype=bool)
    for k, o in enumerate(objs, start=1):
        if o is not None:
            z0, z1 = o[0].start + box[0].start, o[0].stop + box[0].start
            at_edge[k] = z0 == 0 or z1 == depth_z
    slivers = np.flatnonzero(~keep & at_edge & (sizes >= cfg.min_seed_ml * cfg.edge_seed_share))
    if slivers.size and keep.any():
        ids = np.arange(n + 1)
        cents = np.array(ndimage.center_of_mass(seeds > 0, seeds, ids[1:]))
        whole = cents[keep[1:]][:, 1:]
        for k in slivers:
            off = (whole - cents[k - 1, 1:]) * np.asarray(spacing_yx)
            if np.hypot(off[:, 0], off[:, 1]).min() <= cfg.edge_seed_offset_mm:
                keep[k] = True
    return keep


def _drop_beside_bodies(seeds: np.ndarray, n: int, spacing: tuple[float, float, float],
                        offset_mm: float = 12.0) -> tuple[np.ndarray, int]:
    """Drop deep spots that sit beside or behind a larger body at the same height.

    Bodies follow one another along the column; a second, smaller core at the height of a body
    but off its axis is a thick arch or transverse-process root, not a vertebra of its own.
    """
    if n < 2:
        return seeds, n
    ids = np.arange(1, n + 1)
    sizes = np.bincount(seeds.ravel(), minlength=n + 1)[1:]
    cents = np.array(ndimage.center_of_mass(seeds > 0, seeds, ids)) * np.asarray(spacing)
    objs = ndimage.find_objects(seeds)
    keep = np.ones(n + 1, dtype=bool)
    keep[0] = False
    for j in ids:
        larger = ids[sizes >= 2 * sizes[j - 1]]
        if larger.size == 0:
            continue
        off = np.hypot(*(cents[larger - 1, 1:] - cents[j - 1, 1:]).T)
        z0 = np.array([objs[i - 1][0].start for i in larger]) * spacing[0]
        z1 = np.array([objs[i - 1][0].stop for i in larger]) * spacing[0]
        beside = (z0 <= cents[j - 1, 0]) & (cents[j - 1, 0] <= z1) & (off > offset_mm)
        # Below or above the last body and far off its axis: an arch hanging past the body.
        nearest = int(np.argmin(np.abs(cents[larger - 1, 0] - cents[j - 1, 0])))
        if beside.any() or off[nearest] > 2 * offset_mm:
            keep[j] = False
    relabel = np.zeros(n + 1, dtype=np.int32)
    relabel[keep] = np.arange(1, int(keep.sum()) + 1)
    return relabel[seeds], int(keep.sum())


def split_vertebrae(mask: np.ndarray, spacing_xyz: tuple[float, float, float],
                    probabilities: np.ndarray | None = None,
                    config: InstanceConfig | None = None,
                    ct: np.ndarray | None = None) -> Instances:
    """Split a canonical (z, y, x) binary spine mask into vertebra instances.

    ``ct`` (HU on the same grid, optional) lets joint spaces the mask fuses separate vertebrae.
    """
    cfg = config or InstanceConfig()
    binary = np.asarray(mask) > 0
    sx, sy, sz = (float(s) for s in spacing_xyz)
    spacing = (sz, sy, sx)
    voxel_ml = sx * sy * sz / 1000.0
    empty = np.zeros(binary.shape, dtype=np.int32)
    if not binary.any():
        return Instances(empty, empty.copy(), np.zeros((0, 3)), np.zeros((0, 3)))
    box = ndimage.find_objects(binary.astype(np.uint8))[0]
    # Keep one empty voxel around the mask where the scan has one: padding by "edge" then
    # continues the mask only across the scan's real border.
    box = tuple(slice(max(0, s.start - 1), min(n, s.stop + 1))
                for s, n in zip(box, binary.shape, strict=True))
    sub = binary[box]
    depth = _depth(sub, spacing, cfg.edge_pad_mm)
    thr = _seed_threshold(depth, sz, cfg)
    core = (depth >= thr[:, None, None]) & sub
    if probabilities is not None:
        core &= np.asarray(probabilities)[box] >= cfg.seed_probability
    seeds, n = ndimage.label(core)
    keep = _body_seeds(seeds, n, voxel_ml, (sy, sx), box, binary.shape[0], cfg)
    relabel = np.zeros(n + 1, dtype=np.int32)
    relabel[keep] = np.arange(1, int(keep.sum()) + 1)
    seeds, n = relabel[seeds], int(keep.sum())
    seeds, n = _split_at_necks(seeds, n, sz, cfg)
    seeds, n = _drop_beside_bodies(seeds, n, spacing)
    if n == 0:
        return Instances(empty, empty.copy(), np.zeros((0, 3)), np.zeros((0, 3)))
    weight = None
    if ct is not None and cfg.gap_cost > 0:
        weight = _gap_weight(np.asarray(ct)[box].astype(np.float32), spacing, cfg)  # crop, then cast
    costs = _path_costs(sub, depth, spacing, cfg.thin_mm, weight)
    if cfg.slab_cost > 0 and n > 1:
        labels = _nearest_seed_in_slab(seeds, sub, costs, spacing, cfg)
    else:
        labels = _nearest_seed_within(seeds, sub, costs, spacing)
    labels = _attach_unreached(labels, sub, spacing, cfg.attach_mm)

    # Body: what balls of the seed's depth, centred in the seed, fill (a morphological opening).
    to_seed = ndimage.distance_transform_edt(seeds == 0, sampling=spacing)
    bodies = np.where(sub & (to_seed <= thr[:, None, None]), labels, 0).astype(np.int32)

    ids = np.arange(1, n + 1)
    cents = np.array(ndimage.center_of_mass(labels > 0, labels, ids)).reshape(-1, 3)
    body_cents = np.array(ndimage.center_of_mass(bodies > 0, bodies, ids)).reshape(-1, 3)
    present = np.bincount(labels.ravel(), minlength=n + 1)[1:] > 0
    order = ids[present][np.argsort(body_cents[present, 0], kind="stable")]
    remap = np.zeros(n + 1, dtype=np.int32)
    remap[order] = np.arange(1, order.size + 1)
    offset = np.array([s.start for s in box], dtype=float)
    full_labels, full_bodies = empty, np.zeros_like(empty)
    full_labels[box] = remap[labels]
    full_bodies[box] = remap[bodies]
    return Instances(full_labels, full_bodies, cents[order - 1] + offset,
                     body_cents[order - 1] + offset)


def _gap_weight(hu: np.ndarray, spacing: tuple[float, float, float],
                cfg: InstanceConfig) -> np.ndarray:
    """Path-cost factor, 1 in solid bone and up to ``1 + gap_cost`` in a thin dark gap.

    A black top-hat (grey closing minus the image) is large only where a dark sheet thinner
    than the closing's ball runs between brighter bone: a facet joint space, a disc edge. Body
    marrow is too wide to be closed and stays near 1. Axes coarser than the radius (3 mm
    sagittal slices) are not closed along.
    """
    radius = [int(cfg.gap_mm // s) for s in spacing]
    grid = np.ogrid[tuple(slice(-r, r + 1) for r in radius)]
    ball = sum((g * s / cfg.gap_mm) ** 2 for g, s in zip(grid, spacing, strict=True)) <= 1.0
    gap = ndimage.grey_closing(hu, footprint=ball) - hu
    return (1.0 + cfg.gap_cost * np.clip(gap / cfg.gap_hu, 0.0, 1.0)).astype(np.float32)


def _path_costs(mask: np.ndarray, depth: np.ndarray, spacing: tuple[float, float, float],
                thin_mm: float, weight: np.ndarray | None) -> np.ndarray:
    """Cost per mm of a path inside the mask (infinite outside)."""
    costs = np.where(mask, 1.0, np.inf)
    if thin_mm > 0:  # crossing bone thinner than thin_mm costs more: a joint contact, not a pedicle
        costs = costs * (thin_mm / np.clip(depth, min(spacing), thin_mm))
    if weight is not None:  # a joint space the mask fuses costs more to cross
        costs = costs * weight
    return costs


def _nearest_seed_within(seeds: np.ndarray, mask: np.ndarray, costs: np.ndarray,
                         spacing: tuple[float, float, float]) -> np.ndarray:
    """Label each mask voxel with the seed nearest to it along paths inside the mask (in mm).

    An arch is nearer its own body through the pedicles than a neighbour's body through the
    facet joints, even where the mask fuses the joint into a thick block (the thoracolumbar
    facets interlock), which fools a watershed on depth. scikit-image's minimum-cost path gives
    the distances and each voxel's predecessor; following predecessors (pointer jumping, a
    vectorised step per doubling of path length) gives the seed it came from.
    """
    mcp = MCP_Geometric(costs, sampling=spacing)
    _, trace = mcp.find_costs(np.argwhere(seeds > 0))
    offsets = np.asarray(mcp.offsets)
    pred = np.arange(mask.size).reshape(mask.shape)
    step = mask & (trace >= 0)
    where = np.argwhere(step)
    pred[step] = np.ravel_multi_index((where - offsets[trace[step]]).T, mask.shape)
    pred = pred.ravel()
    while True:
        nxt = pred[pred]
        if np.array_equal(nxt, pred):
            break
        pred = nxt
    labels = np.asarray(seeds).ravel()[pred].reshape(mask.shape)
    return np.where(mask, labels, 0).astype(np.int32)


def _nearest_seed_in_slab(seeds: np.ndarray, mask: np.ndarray, costs: np.ndarray,
                          spacing: tuple[float, float, float], cfg: InstanceConfig) -> np.ndarray:
    """As :func:`_nearest_seed_within`, each seed's paths paying more outside its own slab.

    Where a network's mask breaks a pedicle and fuses a facet joint, the shortest path into an
    arch starts at the neighbour's body; the neighbour's path, though, has to run along the
    column into a slab that is not its own. One minimum-cost search per seed (the penalty
    depends on the seed), each within the rows of its two neighbours on either side, so the
    cost grows with the number of vertebrae, not with their square.
    """
    sp = np.asarray(spacing, dtype=float)
    ids = np.array([int(k) for k in np.unique(seeds) if k])
    cents = np.array(ndimage.center_of_mass(seeds > 0, seeds, ids)).reshape(-1, 3)
    order = np.argsort(cents[:, 0], kind="stable")
    ids, cents = ids[order], cents[order]
    best = np.full(mask.shape, np.inf)
    labels = np.zeros(mask.shape, dtype=np.int32)
    for j, k in enumerate(ids):
        z0 = 0 if j < 2 else int(np.floor(cents[j - 2, 0]))
        z1 = mask.shape[0] if j + 2 >= len(ids) else int(np.ceil(cents[j + 2, 0])) + 1
        rows = slice(z0, z1)
        c = cents[j] * sp
        below = cents[j - 1] * sp if j > 0 else None
        above = cents[j + 1] * sp if j + 1 < len(ids) else None
        axis = (above if above is not None else c) - (below if below is not None else c)
        norm = float(np.linalg.norm(axis))
        axis = axis / norm if norm > 0 else np.array([1.0, 0.0, 0.0])
        zz, yy, xx = np.ogrid[rows, :mask.shape[1], :mask.shape[2]]
        along = ((zz * sp[0] - c[0]) * axis[0] + (yy * sp[1] - c[1]) * axis[1]
                 + (xx * sp[2] - c[2]) * axis[2])
        lo = (below - c) @ axis / 2 if below is not None else -np.inf
        hi = (above - c) @ axis / 2 if above is not None else np.inf
        outside = np.maximum(np.maximum(lo - along, along - hi), 0.0)
        local = costs[rows] * (1.0 + cfg.slab_cost * np.clip(outside / cfg.slab_margin_mm, 0, 1))
        cum, _ = MCP_Geometric(local, sampling=spacing).find_costs(
            np.argwhere(seeds[rows] == k))
        win = cum < best[rows]
        best[rows][win] = cum[win]
        labels[rows][win] = k
    return np.where(mask, labels, 0).astype(np.int32)


def _attach_unreached(labels: np.ndarray, mask: np.ndarray, spacing: tuple[float, ...],
                      attach_mm: float) -> np.ndarray:
    """Give mask pieces no seed reached (a detached spinous process) to the nearest instance."""
    loose = mask & (labels == 0)
    if not loose.any():
        return labels
    dist, (iz, iy, ix) = ndimage.distance_transform_edt(labels == 0, sampling=spacing,
                                                        return_indices=True)
    near = labels[iz, iy, ix]
    pieces, n = ndimage.label(loose)
    # A piece joins as a whole: the instance nearest to its closest voxel.
    closest = ndimage.minimum_position(dist, pieces, np.arange(1, n + 1))
    out = labels.copy()
    for k, pos in enumerate(closest, start=1):
        if dist[pos] <= attach_mm:
            out[pieces == k] = near[pos]
    return out
