"""The parts of the CycleGANDenoise module that need no 3D Slicer, so they are tested outside it.

* :mod:`.command`: the engine command line and environment for a run;
* :mod:`.events`: the engine's JSON progress, warning and summary lines;
* :mod:`.process`: the child process that runs the engine, with cancel;
* :mod:`.devices`: what can run the network, asked of the engine in a child process;
* :mod:`.arrays`: volume files, strength blending, slabs for Preview, ROI statistics;
* :mod:`.presets`: window presets;
* :mod:`.dependencies`: what a CPU or a GPU run needs installed.
"""
