"""Simulation of test data by means independent of fluororeg's own renderer.

* :mod:`fluororeg.simulation.plastimatch_drr`: cone-beam DRRs by plastimatch's ``drr``
  command (Siddon ray tracing) and dual-fluoroscope recordings rendered with it, with
  image-intensifier effects unlike the training augmentation.
* :mod:`fluororeg.simulation.subjects`: test subjects for those recordings (the example
  subject with a rotated CT header, the headsq CT with proposed landmarks).

Nothing heavy is imported here; import the submodules.
"""
