"""Read a DICOM-SEG segment back onto a reference grid the way a viewer does: each frame placed
by its own position and orientation in physical space, not by frame order."""

from __future__ import annotations

import numpy as np

from spineseg.io import Volume


def read_seg_onto(path, reference: Volume, segment: int = 1) -> np.ndarray:
    """Segment ``segment`` of the DICOM-SEG at ``path`` on ``reference``'s grid (0/1)."""
    import highdicom as hd

    seg = hd.seg.segread(path)
    out = np.zeros(reference.array.shape, np.uint8)
    d = reference.direction_matrix
    inverse = np.linalg.inv(d * np.asarray(reference.spacing))
    shared = seg.SharedFunctionalGroupsSequence[0]
    iop = np.asarray([float(v) for v in
                      shared.PlaneOrientationSequence[0].ImageOrientationPatient])
    np.testing.assert_allclose(iop, np.concatenate([d[:, 0], d[:, 1]]), atol=1e-5)
    frames = seg.pixel_array.reshape(-1, *reference.array.shape[1:])
    for item, frame in zip(seg.PerFrameFunctionalGroupsSequence, frames, strict=True):
        ident = item if "SegmentIdentificationSequence" in item else shared
        if int(ident.SegmentIdentificationSequence[0].ReferencedSegmentNumber) != segment:
            continue
        position = np.asarray([float(v) for v in
                               item.PlanePositionSequence[0].ImagePositionPatient])
        index = inverse @ (position - np.asarray(reference.origin))
        k = round(float(index[2]))
        np.testing.assert_allclose(index, [0, 0, k], atol=1e-3)
        out[k] |= frame.astype(np.uint8)
    return out
