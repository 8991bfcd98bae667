"""Place the default example subject's 33 landmarks on the Cranium CT (provenance script).

The landmarks in python/fluororeg/data/cranium/landmarks.mrk.json were made with this
script and then checked by eye on CT slices and DRRs (tools/show_landmarks.py). Each is an
anthropometric extreme point of the bone surface (the scan ends
at the upper teeth, so there is no mandible and no mastoid tip) (HU >= 300, largest component), measured in
the CT's LPS frame, which for this scan is aligned with the head: x toward the left, y toward
posterior, z toward superior. The mid-sagittal plane is found by mirror symmetry of the bone
mask. The subject has a right frontal bone defect (no bone 5..40 mm above the orbits on the
right), so no landmark is placed on the frontal bone off the midline. Run: python tools/place_cranium_landmarks.py [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
from fluororeg.subject.example import cranium_volume  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "python/fluororeg/data/cranium"))
    args = ap.parse_args()
    ct = cranium_volume()
    bone = ct.mask(300.0).data.astype(bool)
    k, j, i = np.nonzero(bone)
    P = ct.voxel_to_physical(np.stack([i, j, k], axis=1).astype(float))  # [N, 3] mm LPS
    hu = ct.data[k, j, i]

    # Mid-sagittal plane x = xm from the mirror shift that best overlaps the mask.
    best = max(range(-16, 17), key=lambda off: int((np.roll(bone[:, :, ::-1], off, axis=2) & bone).sum()))
    nx = bone.shape[2]
    i_mid = (nx - 1 + best) / 2.0
    xm = float(ct.voxel_to_physical([i_mid, 0, 0])[0])
    X, Y, Z = P[:, 0] - xm, P[:, 1], P[:, 2]

    def pick(sel, score, name):
        idx = np.nonzero(sel)[0]
        if idx.size == 0:
            raise RuntimeError(f"no bone voxel for {name}")
        return P[idx[np.argmax(score[idx])]]

    mid = np.abs(X) <= 2.0
    points: dict[str, np.ndarray] = {}
    points["vertex"] = pick(mid, Z, "vertex")
    points["opisthocranion"] = pick(mid & (Z > -25) & (Z < 40), Y, "opisthocranion")
    points["glabella"] = pick(mid & (Z > -5) & (Z < 20), -Y, "glabella")
    # Nasion: the deepest point of the anterior midline profile between glabella and nasal bones.
    prof = {}
    for z in np.unique(np.round(Z[mid & (Z > -20) & (Z < -2)], 3)):
        s = mid & (np.abs(Z - z) < 1e-3)
        prof[z] = P[np.nonzero(s)[0][np.argmin(Y[s])]]
    points["nasion"] = max(prof.values(), key=lambda p: p[1])
    points["rhinion"] = pick(mid & (Z > -36) & (Z < -20), -Y, "rhinion")
    points["anterior_nasal_spine"] = pick(mid & (Z > -57) & (Z < -47), -Y, "anterior_nasal_spine")
    points["upper_incisor"] = pick(mid & (Z > -77) & (Z < -70), -Y, "upper_incisor")

    for side, sgn in (("L", 1.0), ("R", -1.0)):
        lat = sgn * X  # > 0 on this side
        points[f"euryon_{side}"] = pick((lat > 0) & (Z > 0), lat, "euryon")
        points[f"zygion_{side}"] = pick((lat > 0) & (Z > -45) & (Z < -20) & (Y > -60) & (Y < 10), lat, "zygion")
        orbit = (np.abs(lat - 33) < 2.5) & (Y < -30)
        # Anterior profile through the orbit: the rims are where bone reaches forward.
        zs = np.unique(np.round(Z[orbit & (Z > -45) & (Z < 15)], 3))
        front = np.array([Y[orbit & (np.abs(Z - z) < 1e-3)].min() for z in zs])
        deep = front > front.min() + 15  # the orbital opening: bone far behind the rims
        runs = np.split(np.arange(len(zs)), np.nonzero(np.diff(deep.astype(int)))[0] + 1)
        opening = max((r for r in runs if deep[r[0]]), key=len)  # longest deep run
        z_sup, z_inf = zs[opening].max(), zs[opening].min()
        points[f"supraorbitale_{side}"] = pick(orbit & (Z > z_sup) & (Z < z_sup + 6), -Y, "supraorbitale")
        points[f"orbitale_{side}"] = pick(orbit & (Z < z_inf) & (Z > z_inf - 6), -Y, "orbitale")
        z_orb = 0.5 * (z_sup + z_inf)
        points[f"frontozygomatic_{side}"] = pick((np.abs(Z - z_orb - 8) < 4) & (lat > 40) & (lat < 60) & (Y < -20), -Y, "frontozygomatic")
        points[f"parietal_posterior_{side}"] = pick((Z > 5) & (Z < 15) & (lat > 0), lat + Y, "parietal_posterior")
        # (no frontal-bone pair: this subject has a right frontal bone defect, z 5..40 mm)
        points[f"occipital_inferior_{side}"] = pick((np.abs(lat - 25) < 2.5) & (np.abs(Z + 40) < 1.6), Y, "occipital_inferior")
        points[f"parietal_eminence_{side}"] = pick((Z > 35) & (Z < 55) & (Y > 20) & (Y < 60) & (lat > 0), lat, "parietal_eminence")
        points[f"occipital_{side}"] = pick((np.abs(lat - 40) < 2.5) & (np.abs(Z + 15) < 3), Y, "occipital")
        points[f"zygomaxillare_{side}"] = pick((lat > 25) & (Z > -58) & (Z < -46) & (Y < -30), lat, "zygomaxillare")
        # Teeth (enamel/dentine, > 1800 HU) at a level above the scan's lower edge, which cuts
        # through the crowns.
        teeth = (hu > 1800) & (Z > -77) & (Z < -70) & (lat > 0)
        points[f"molar_{side}"] = pick(teeth & (Y > -70), lat, "molar")
        points[f"canine_{side}"] = pick(teeth & (Y < -50), lat - Y, "canine")  # corner of the dental arch
        points[f"temporal_{side}"] = pick((Z > -15) & (Z < -5) & (Y > 0) & (Y < 30) & (lat > 0), lat, "temporal")

    names = list(points)
    pairs = sorted({(n[:-2] + "_L", n[:-2] + "_R") for n in names if n.endswith(("_L", "_R"))})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    markups = {
        "@schema": "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/markups-schema-v1.0.3.json#",
        "markups": [{
            "type": "Fiducial",
            "coordinateSystem": "LPS",
            "coordinateUnits": "mm",
            "controlPoints": [
                {"id": str(n + 1), "label": name, "position": [round(float(c), 3) for c in points[name]],
                 "positionStatus": "defined"}
                for n, name in enumerate(names)
            ],
        }],
    }
    (out / "landmarks.mrk.json").write_text(json.dumps(markups, indent=2) + "\n")
    (out / "subject.json").write_text(json.dumps({
        "name": "cranium",
        "ct": "(example_data.cranium_volume)",
        "landmarks": "landmarks.mrk.json",
        "pairs": [list(p) for p in pairs],
        "origin": "centroid",
        "mask": {"threshold_hu": 300, "largest_component": True},
    }, indent=2) + "\n")
    print(f"mid-sagittal plane x = {xm:.2f} mm; {len(names)} landmarks, {len(pairs)} pairs -> {out}")
    for name in names:
        print(f"  {name:26s} {np.round(points[name], 1)}")


if __name__ == "__main__":
    main()
