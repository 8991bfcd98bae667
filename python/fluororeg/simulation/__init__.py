"""Simulation of test data with ground truth, by fluororeg's own renderer or an independent one.

* :mod:`fluororeg.simulation.plastimatch_drr`: cone-beam DRRs by plastimatch's ``drr``
  command (Siddon ray tracing) and dual-fluoroscope recordings rendered with it, with
  image-intensifier effects unlike the training augmentation.
* :mod:`fluororeg.simulation.subjects`: test subjects for those recordings (the example
  subject with a rotated CT header, the headsq CT with proposed landmarks).
* :mod:`fluororeg.simulation.neighbours`: frames where a second bone overlaps the registered
  one (a neighbour laid along a bone, a soft-tissue cylinder's exact line integrals).
* :mod:`fluororeg.simulation.simulate`: fluororeg's own simulated recordings, and starts a given
  distance off a true pose (:func:`~fluororeg.simulation.simulate.perturbed_poses`).

Nothing heavy is imported here; import the submodules.
"""
