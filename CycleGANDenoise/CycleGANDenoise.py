"""CycleGANDenoise: low-dose CT denoising in 3D Slicer with the ctdenoise engine.

The module is a thin shell over the engine bundled next to it (``ctdenoise``): it writes the input
volume to a temporary NRRD, runs ``ctdenoise denoise --progress json`` in a separate Python process
(so Slicer stays responsive and a run can be cancelled), reads the result back and keeps it at full
strength, so the strength slider blends input and result live. Everything that needs no Slicer
lives in ``CycleGANDenoiseLib`` and is tested outside Slicer.
"""

import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Annotated, Callable, Optional, Union

import qt
import slicer
import vtk
from slicer import vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

SETTINGS_MODEL = "CycleGANDenoise/ModelPath"
SETTINGS_BUNDLED = "CycleGANDenoise/BundledModel"
SETTINGS_DEVICE = "CycleGANDenoise/Device"
SETTINGS_PRESET = "CycleGANDenoise/WindowPreset"
POLL_INTERVAL_MS = 100
STRENGTH_DELAY_MS = 150
PREVIEW_SLICES = 1
AVERAGED_VIEWS = 8
"""Views of each slice the module averages when "Average 8 mirrored and rotated views" is on."""
PREVIEW_ATTRIBUTE = "CycleGANDenoise.PreviewOf"
NOISE_WINDOW = (100.0, 0.0)
"""Window (width, level) of a removed-noise volume: about +-50 HU around 0."""


#
# CycleGANDenoise
#


class CycleGANDenoise(ScriptedLoadableModule):
    """Module description shown in Slicer."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("CycleGAN Denoise")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Filtering")]
        self.parent.dependencies = []
        self.parent.contributors = ["SlicerCycleGANDenoise developers"]
        self.parent.helpText = _(
            "Reduce the noise of low-dose CT with a CycleGAN trained without paired data. Select a CT volume and "
            "click Denoise; Preview denoises the slice you look at in a second or two. The strength slider blends "
            "the input and the result without running again."
        )
        self.parent.acknowledgementText = _(
            "The bundled models were trained on public CT from TCIA (COVID-19-NY-SBU, TCGA-LUAD, TCGA-LUSC) and "
            "TotalSegmentator's example data; see the model cards for licenses and attributions."
        )


#
# Parameter node
#


@parameterNodeWrapper
class CycleGANDenoiseParameterNode:
    """What the module works on.

    inputVolume: the CT to denoise.
    outputVolume: where the result goes (a new volume named after the input when empty).
    noiseVolume: optional; receives what denoising removed (input minus output).
    strength: 0..1, the share of the model's change shown; changing it needs no new run.
    averageViews: average the results of 8 mirrored and rotated views of each slice (8x slower); off:
        only on small slices whose pixels are far coarser than the model's training data (engine's ``auto``).
    roi: the box in which the noise readout measures mean and standard deviation.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    outputVolume: vtkMRMLScalarVolumeNode
    noiseVolume: vtkMRMLScalarVolumeNode
    strength: Annotated[float, WithinRange(0.0, 1.0)] = 1.0
    averageViews: bool = False
    roi: vtkMRMLMarkupsROINode


#
# Widget
#


class CycleGANDenoiseWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module's panel: a state machine (idle, installing, running, cancelling) around the logic."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._state = "idle"
        self._deviceReport = None
        self._strengthTimer = None

    def setup(self) -> None:
        """Load the .ui, connect it, and fill the menus that do not depend on the scene."""
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CycleGANDenoise.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = CycleGANDenoiseLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        from CycleGANDenoiseLib.presets import CUSTOM, PRESETS

        names = {
            "abdomen": _("Abdomen"),
            "liver": _("Liver"),
            "brain": _("Brain"),
            "bone": _("Bone"),
            "lung": _("Lung"),
        }
        for item in PRESETS:
            label = _("{name} (W{width:g} L{level:g})").format(name=names[item.key], width=item.width, level=item.level)
            self.ui.presetComboBox.addItem(label, item.key)
        self.ui.presetComboBox.addItem(_("Custom (keep the current window)"), CUSTOM)
        chosen = self.ui.presetComboBox.findData(slicer.util.settingsValue(SETTINGS_PRESET, "abdomen"))
        self.ui.presetComboBox.setCurrentIndex(max(0, chosen))
        self.ui.deviceComboBox.addItem(_("auto"), "auto")
        self.ui.deviceComboBox.addItem(_("cpu"), "cpu")
        bundledNames = {"cyclegan": _("Bundled: CycleGAN"), "supervised": _("Bundled: supervised")}
        for name in self.logic.bundledModels():
            self.ui.bundledModelComboBox.addItem(bundledNames.get(name, name), name)
        chosen = self.ui.bundledModelComboBox.findData(slicer.util.settingsValue(SETTINGS_BUNDLED, "cyclegan"))
        self.ui.bundledModelComboBox.setCurrentIndex(max(0, chosen))
        self.ui.modelPathLineEdit.currentPath = slicer.util.settingsValue(SETTINGS_MODEL, "")
        self.ui.progressBar.hide()
        self._strengthTimer = qt.QTimer()
        self._strengthTimer.setSingleShot(True)
        self._strengthTimer.setInterval(STRENGTH_DELAY_MS)
        self._strengthTimer.connect("timeout()", self.applyStrength)

        self.ui.denoiseButton.connect("clicked(bool)", self.onDenoiseButton)
        self.ui.previewButton.connect("clicked(bool)", self.onPreviewButton)
        self.ui.detectDevicesButton.connect("clicked(bool)", self.onDetectDevices)
        self.ui.bundledModelComboBox.connect("activated(int)", self.onUseBundledModel)
        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.onModelPathChanged)
        self.ui.presetComboBox.connect("currentIndexChanged(int)", self.onPresetChanged)
        self.ui.strengthSlider.connect("valueChanged(double)", self.onStrengthChanged)
        self.ui.sideBySideButton.connect("clicked(bool)", self.onSideBySide)
        self.ui.measureButton.connect("clicked(bool)", self.onMeasure)

        self.initializeParameterNode()
        self.onModelPathChanged(self.ui.modelPathLineEdit.currentPath)

    def cleanup(self) -> None:
        """Stop a running engine and remove observers when the module is closed."""
        if self.logic is not None:
            self.logic.cancel()
        self.removeObservers()

    def enter(self) -> None:
        """Make sure there is a parameter node; list devices the first time (in the background)."""
        self.initializeParameterNode()
        if self._deviceReport is None:
            self.onDetectDevices()

    def exit(self) -> None:
        """Disconnect the GUI from the parameter node."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        """The scene is closing: cancel a run, forget kept results, drop the parameter node."""
        self.logic.cancel()
        self.logic.clearResults()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        """A new scene: a new parameter node."""
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """The singleton parameter node, with the first CT volume as input when none is chosen."""
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            for volume in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"):
                if not volume.IsA("vtkMRMLLabelMapVolumeNode"):
                    self._parameterNode.inputVolume = volume
                    break

    def setParameterNode(self, inputParameterNode: Optional[CycleGANDenoiseParameterNode]) -> None:
        """Bind the GUI to ``inputParameterNode`` (and unbind the previous one)."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        """Enable Denoise and Preview when the volumes are valid; the button is Cancel while a run goes on."""
        running = self._state in ("running", "cancelling")
        problem = self.logic.volumesProblem(self._parameterNode) if self._parameterNode else _("No parameter node.")
        self.ui.denoiseButton.text = _("Cancel") if running else _("Denoise")
        self.ui.denoiseButton.enabled = (running and self._state != "cancelling") or (
            not problem and self._state == "idle"
        )
        self.ui.previewButton.enabled = not problem and self._state == "idle"
        self.ui.denoiseButton.toolTip = (
            _("Stop the engine now: no output is created")
            if running
            else problem or _("Denoise the whole input volume")
        )

    def _setState(self, state: str) -> None:
        self._state = state
        self._checkCanApply()
        slicer.app.processEvents()

    # ----------------------------------------------------------------------------------- model

    def selectedModel(self) -> Optional[str]:
        """The model file chosen, else the name of the bundled model chosen (None: the default one)."""
        path = self.ui.modelPathLineEdit.currentPath.strip()
        return path or self.ui.bundledModelComboBox.currentData

    def onUseBundledModel(self, index: int) -> None:
        """Use the model shipped with the extension that was picked (the file path is cleared)."""
        qt.QSettings().setValue(SETTINGS_BUNDLED, self.ui.bundledModelComboBox.itemData(index))
        self.ui.modelPathLineEdit.currentPath = ""
        self.onModelPathChanged("")  # the path editor does not signal an empty path

    def onModelPathChanged(self, path: str) -> None:
        """Show what the model is (or why the file is refused); remember only usable choices."""
        text, valid = self.logic.modelDescription(path.strip() or self.ui.bundledModelComboBox.currentData)
        self.ui.modelInfoLabel.text = text
        self.ui.modelInfoLabel.styleSheet = "" if valid else "color: #c0392b"
        if valid:
            qt.QSettings().setValue(SETTINGS_MODEL, path.strip())
            if path.strip():
                self.ui.modelPathLineEdit.addCurrentPathToHistory()

    # --------------------------------------------------------------------------------- devices

    def onDetectDevices(self) -> None:
        """Ask the engine (in a child process, in the background) what can run the network."""
        self.ui.detectDevicesButton.enabled = False
        self.ui.deviceNoteLabel.text = _("Looking for devices...")
        self.ui.deviceNoteLabel.visible = True
        try:
            self.logic.detectDevices(self.onDevicesFound)
        except RuntimeError as error:
            self.ui.deviceNoteLabel.text = str(error)
            self.ui.detectDevicesButton.enabled = True

    def onDevicesFound(self, report) -> None:
        """Fill the device menu (keeping the remembered choice) and show what the user should know."""
        self._deviceReport = report
        self.ui.detectDevicesButton.enabled = True
        remembered = slicer.util.settingsValue(SETTINGS_DEVICE, "auto")
        self.ui.deviceComboBox.clear()
        for choice in self._deviceReport.choices:
            self.ui.deviceComboBox.addItem(choice.label, choice.id)
        self.ui.deviceComboBox.setCurrentIndex(max(0, self.ui.deviceComboBox.findData(remembered)))
        self.ui.deviceNoteLabel.text = "\n".join(self._deviceReport.notes)
        self.ui.deviceNoteLabel.visible = bool(self._deviceReport.notes)

    def selectedDevice(self) -> str:
        """The device id chosen in the menu (``auto``, ``cpu``, ``cuda:0``, ``mps``)."""
        device = self.ui.deviceComboBox.itemData(self.ui.deviceComboBox.currentIndex) or "auto"
        qt.QSettings().setValue(SETTINGS_DEVICE, device)
        return device

    # ------------------------------------------------------------------------------------- run

    def onDenoiseButton(self) -> None:
        """Denoise, or cancel the run in progress."""
        if self._state == "running":
            self._setState("cancelling")
            self.logic.cancel()
            return
        self._start(preview=False)

    def onPreviewButton(self) -> None:
        """Denoise only the slice shown in the red view."""
        self._start(preview=True)

    def _start(self, preview: bool) -> None:
        node = self._parameterNode
        device = self.selectedDevice()
        self.ui.warningsTextEdit.plainText = ""
        self.ui.statusLabel.text = ""
        self._setState("installing")
        try:
            with slicer.util.tryWithErrorDisplay(_("Could not start denoising.")):
                gpuFound = bool(self._deviceReport and self._deviceReport.gpu_found)
                if not self.logic.ensureDependencies(device, gpuFound=gpuFound):
                    self.ui.statusLabel.text = _("Nothing was installed, so nothing ran.")
                    self._setState("idle")
                    return
                self._setState("running")
                self.ui.progressBar.setRange(0, 100)
                self.ui.progressBar.value = 0
                self.ui.progressBar.setFormat(_("Starting the engine..."))
                self.ui.progressBar.show()
                arguments = {
                    "checkpoint": self.selectedModel(),
                    "strength": node.strength,
                    "device": device,
                    "tta": AVERAGED_VIEWS if node.averageViews else "auto",
                    "waitForCompletion": False,
                    "progressCallback": self.onEngineEvent,
                    "completedCallback": self.onRunCompleted,
                }
                if preview:  # into a preview volume of its own: a full result stays as it is
                    self.logic.preview(node.inputVolume, self.redViewPosition(), **arguments)
                else:
                    self.logic.denoise(node.inputVolume, node.outputVolume, noiseNode=node.noiseVolume, **arguments)
        finally:
            if self._state == "installing" or not self.logic.running():
                if self._state != "idle":
                    self.ui.progressBar.hide()
                    self._setState("idle")

    def redViewPosition(self) -> list:
        """The RAS position at the centre of the red slice view (where Preview looks)."""
        sliceNode = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceNode()
        sliceToRAS = sliceNode.GetSliceToRAS()
        return [sliceToRAS.GetElement(row, 3) for row in range(3)]

    def onEngineEvent(self, event) -> None:
        """Show the engine's progress (percent and time left) and its warnings as they arrive."""
        if event.kind == "progress":
            self.ui.progressBar.value = round(100 * float(event.data.get("fraction", 0.0)))
            self.ui.progressBar.setFormat(event.text)
        elif event.kind == "warning":
            self.ui.warningsTextEdit.appendPlainText(_("Warning: {message}").format(message=event.text))

    def onRunCompleted(self, run) -> None:
        """Report how the run ended; on success show input and output side by side."""
        self.ui.progressBar.hide()
        if run.state == "succeeded":
            summary = run.summary
            seconds = float(summary.get("seconds", 0.0)) or 1e-6
            self.ui.statusLabel.text = _(
                "Denoised {slices} slices in {seconds:.1f} s on {runtime} {device} ({speed:.2f} slices/s)."
            ).format(
                slices=summary.get("slices", 0),
                seconds=seconds,
                runtime=summary.get("runtime", "?"),
                device=summary.get("device", "?"),
                speed=summary.get("slices", 0) / seconds,
            )
            if summary.get("passes") == 2:
                self.ui.statusLabel.text += " " + _(
                    "The model ran twice: one pass left more noise than its second-pass threshold."
                )
            if summary.get("tta") == AVERAGED_VIEWS and summary.get("tta_option") == "auto":
                self.ui.statusLabel.text += " " + _(
                    "8 views were averaged: the pixels are far coarser than the model's training data."
                )
            if run.outputNode is not None:
                if run.slab is None:
                    self._parameterNode.outputVolume = run.outputNode
                self.logic.setStrength(run.outputNode, self._parameterNode.strength, run.noiseNode)  # the slider now
                self.logic.showSideBySide(run.inputNode, run.outputNode)
                key = self.ui.presetComboBox.itemData(self.ui.presetComboBox.currentIndex)
                self.logic.applyWindowPreset(key, [run.inputNode, run.outputNode])
        elif run.state == "cancelled":
            self.ui.statusLabel.text = _("Cancelled: no output was created.")
        else:
            self.ui.statusLabel.text = _("Denoising failed: {error}").format(error=run.error)
            slicer.util.errorDisplay(_("Denoising failed: {error}").format(error=run.error))
        self._setState("idle")

    # ------------------------------------------------------------------------- compare results

    def onStrengthChanged(self, value: float) -> None:
        """Blend again shortly after the slider stops moving (a blend rewrites the whole volume)."""
        self._strengthTimer.start()

    def applyStrength(self) -> None:
        """Blend input and the kept full-strength result at the slider's strength: no new run."""
        node = self._parameterNode
        if node and node.outputVolume and self.logic.hasResult(node.outputVolume):
            self.logic.setStrength(node.outputVolume, node.strength, node.noiseVolume)

    def onPresetChanged(self, index: int = -1) -> None:
        """Apply the chosen window to input and output together."""
        key = self.ui.presetComboBox.itemData(self.ui.presetComboBox.currentIndex)
        qt.QSettings().setValue(SETTINGS_PRESET, key)
        node = self._parameterNode
        if node:
            self.logic.applyWindowPreset(key, [node.inputVolume, node.outputVolume])

    def onSideBySide(self) -> None:
        """Input on the left, output on the right, linked."""
        node = self._parameterNode
        if node and node.inputVolume and node.outputVolume:
            self.logic.showSideBySide(node.inputVolume, node.outputVolume)

    def onMeasure(self) -> None:
        """Mean and standard deviation inside the ROI, for input and output (a new ROI when none is chosen)."""
        node = self._parameterNode
        if not (node and node.inputVolume):
            return
        if not node.roi:
            node.roi = self.logic.createRoi(node.inputVolume)
        volumes = {_("input"): node.inputVolume}
        if node.outputVolume:
            volumes[_("output")] = node.outputVolume
        lines = []
        for label, stats in self.logic.roiStatistics(node.roi, volumes).items():
            lines.append(
                _("{label}: mean {mean:.1f} HU, noise (std) {std:.1f} HU in {voxels} voxels").format(
                    label=label, mean=stats["mean"], std=stats["std"], voxels=stats["voxels"]
                )
            )
        self.ui.noiseReadoutLabel.text = "\n".join(lines)


#
# Logic
#


class DenoiseRun:
    """One engine run started by the logic: its process, temporary folder, and where the result goes."""

    def __init__(self, inputNode, outputNode, noiseNode, strength, folder, process, slab=None, outputName=""):
        self.inputNode = inputNode
        self.outputNode = outputNode
        self.noiseNode = noiseNode
        self.strength = strength
        self.folder = folder
        self.process = process
        self.slab = slab
        self.outputName = outputName
        self.progressCallback = None
        self.completedCallback = None
        self.timer = None

    @property
    def state(self) -> str:
        """``running``, ``succeeded``, ``failed`` or ``cancelled``."""
        return self.process.state

    @property
    def summary(self) -> dict:
        """The engine's summary of a successful run."""
        return self.process.summary

    @property
    def error(self) -> str:
        """The engine's one-line error of a failed run."""
        return self.process.error


class RunSettings:
    """How a run goes: the model, strength, device and views, whether to wait, and whom to tell."""

    def __init__(self, checkpoint, strength, device, tta, waitForCompletion, progressCallback, completedCallback):
        self.checkpoint = checkpoint
        self.strength = strength
        self.device = device
        self.tta = tta
        self.waitForCompletion = waitForCompletion
        self.progressCallback = progressCallback
        self.completedCallback = completedCallback


class KeptResult:
    """A full-strength result kept for live blending: the nodes it belongs to and both arrays."""

    def __init__(self, outputNode, inputNode, source, full):
        self.outputNode = outputNode
        self.inputNode = inputNode
        self.source = source
        self.full = full


class CycleGANDenoiseLogic(ScriptedLoadableModuleLogic):
    """Denoise volumes with the bundled engine in a child process; no Qt widgets here.

    From the Python console::

        logic = slicer.util.getModuleLogic("CycleGANDenoise")
        outputNode = logic.denoise(slicer.util.getNode("CTChest"))
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.moduleDir = Path(__file__).resolve().parent
        self.results = {}
        self.activeRun = None
        self.keepTemporaryFiles = False
        self._deviceDetection = None

    def getParameterNode(self):
        """The module's parameter node, typed."""
        return CycleGANDenoiseParameterNode(super().getParameterNode())

    # ------------------------------------------------------------------------ engine and setup

    def engineDir(self) -> Path:
        """Where ``ctdenoise`` lives: next to the module when installed, ``training/src`` in a source tree."""
        if (self.moduleDir / "ctdenoise").is_dir():
            return self.moduleDir
        source = self.moduleDir.parent / "training" / "src"
        if (source / "ctdenoise").is_dir():
            return source
        raise RuntimeError(_("The ctdenoise engine is missing from the extension: reinstall CycleGANDenoise."))

    def pythonExecutable(self) -> str:
        """Slicer's own Python launcher (PythonSlicer), so the child has Slicer's packages."""
        python = shutil.which("PythonSlicer")
        if not python:
            raise RuntimeError(_("Slicer's Python launcher (PythonSlicer) was not found: reinstall 3D Slicer."))
        return python

    def engineEnvironment(self, device: str) -> dict:
        """Environment of the child: the bundled engine on the path, unbuffered output."""
        self._importEngine()
        from CycleGANDenoiseLib.command import engine_environment

        inherited = {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}
        return engine_environment(self.engineDir(), inherited, cpu_only=device == "cpu")

    def _importEngine(self) -> None:
        """Make ``import ctdenoise`` work in Slicer's process (light parts only: options, model metadata)."""
        engine = str(self.engineDir())
        if engine not in sys.path:
            sys.path.append(engine)

    def ensureDependencies(self, device: str = "auto", askConfirmation: bool = True, gpuFound: bool = False) -> bool:
        """Install what a run on ``device`` needs, after one confirmation; False when the user declines.

        CPU runs need ONNX Runtime only. GPU runs (a GPU device, or ``auto`` where PyTorch found a GPU)
        need PyTorch, installed through the PyTorch extension (PyTorchUtils), and MONAI. Slicer's numpy,
        SimpleITK and pydicom are never replaced.
        """
        from CycleGANDenoiseLib.dependencies import (
            CPU_REQUIREMENTS,
            GPU_REQUIREMENTS,
            TORCH_REQUIREMENT,
            missing,
            needs_gpu,
            torch_installed,
        )

        gpu = needs_gpu(device, gpuFound)
        packages = missing(CPU_REQUIREMENTS + (GPU_REQUIREMENTS if gpu else ()))
        torchLogic = None
        if gpu and not torch_installed():
            try:
                import PyTorchUtils
            except ModuleNotFoundError:
                raise RuntimeError(
                    _(
                        "GPU denoising needs the PyTorch extension: install 'PyTorch' from the Extensions Manager and "
                        "restart Slicer, or choose the cpu device."
                    )
                ) from None
            torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if not packages and torchLogic is None:
            return True
        listed = (
            [f"torch{TORCH_REQUIREMENT} " + _("(through the PyTorch extension)")] if torchLogic else []
        ) + packages
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(
            _("Denoising needs Python packages that are not installed yet. Install them now?"),
            windowTitle=_("CycleGAN Denoise"),
            detailedText=_("Packages that will be downloaded and installed:") + "\n" + "\n".join(listed),
        ):
            return False
        with slicer.util.WaitCursor():
            if torchLogic is not None:
                installed = torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT)
                if installed is None:
                    raise RuntimeError(
                        _("PyTorch was not installed: GPU denoising is not available. Choose the cpu device.")
                    )
            if packages:
                slicer.util.pip_install(" ".join(packages))
        return True

    def bundledModels(self) -> list:
        """Names of the models shipped with the extension; the first is the default."""
        self._importEngine()
        from ctdenoise.inference import BUNDLED_MODELS

        return list(BUNDLED_MODELS)

    def modelDescription(self, checkpoint: Optional[str]):
        """(text, valid): what the model (a file, or a bundled model's name) is from its metadata, or the
        engine's one-line reason it is refused."""
        try:
            self._importEngine()
            from ctdenoise.errors import CTDenoiseError
            from ctdenoise.inference import model_path
            from ctdenoise.modelfile import read_model

            path = model_path(checkpoint)
            if not path.is_file():
                return _("No model file at {path}.").format(path=checkpoint), False
            if path.suffix.lower() != ".safetensors":
                return _(
                    "Seed or training checkpoint: it runs on PyTorch (choose a GPU device or install PyTorch)."
                ), True
            summary = read_model(path).summary()
        except (CTDenoiseError, OSError, RuntimeError) as error:
            return _("Not a usable model: {reason}").format(reason=str(error)), False
        data = summary.get("training_data") or {}
        metrics = summary.get("metrics") or {}
        normalization = summary["normalization"]
        lines = [
            _("{file}: '{preset}' generator; HU clipped to {low:g}..{high:g}, divided by {scale:g}.").format(
                file=summary["file"],
                preset=summary["preset"],
                low=normalization["hu_min"],
                high=normalization["hu_max"],
                scale=normalization["scale"],
            )
        ]
        if isinstance(data, dict) and data:
            lines.append(
                _("Trained on {slices} slices of {patients} patients ({lowdose} low dose).").format(
                    slices=(data.get("slices") or {}).get("low", "?"),
                    patients=(data.get("patients") or {}).get("train", "?"),
                    lowdose=data.get("low_dose", "?"),
                )
            )
        if metrics.get("denoised"):
            lines.append(
                _("Validation PSNR {before:.2f} -> {after:.2f} dB, SSIM {ssim_before:.3f} -> {ssim_after:.3f}.").format(
                    before=metrics["low_dose_input"]["psnr"],
                    after=metrics["denoised"]["psnr"],
                    ssim_before=metrics["low_dose_input"]["ssim"],
                    ssim_after=metrics["denoised"]["ssim"],
                )
            )
        lines.append(
            _("Runs on: {graphs}; change limit {limit:g} HU.").format(
                graphs=", ".join(["PyTorch"] + [f"ONNX Runtime {g}" for g in summary.get("graphs", [])]),
                limit=summary["change_limit_hu"],
            )
        )
        if summary.get("second_pass_noise_hu"):
            lines.append(
                _("Runs twice where one pass leaves more than {noise:g} HU of noise in flat tissue.").format(
                    noise=summary["second_pass_noise_hu"]
                )
            )
            if summary.get("second_pass_fine"):
                pixel, noise = summary["second_pass_fine"]
                lines.append(
                    _("On pixels up to {pixel:g} mm: more than {noise:g} HU.").format(pixel=pixel, noise=noise)
                )
        return "\n".join(lines), True

    def detectDevices(self, callback: Callable) -> None:
        """Ask the engine in a child process what can run the network; ``callback(report)`` when it answers.

        The child is started with Slicer's launcher (no console window on Windows) and polled by a
        timer, so Slicer stays responsive while PyTorch, if installed, starts up in the child.
        """
        from CycleGANDenoiseLib.devices import DESCRIBE, parse_report

        environment = self.engineEnvironment("auto")
        process = slicer.util.launchConsoleProcess(
            [self.pythonExecutable(), "-c", DESCRIBE], updateEnvironment=environment
        )
        timer = qt.QTimer()
        timer.setInterval(POLL_INTERVAL_MS)

        def check():
            if process.poll() is None:
                return
            timer.stop()
            self._deviceDetection = None
            output = process.stdout.read() if process.stdout else ""
            callback(parse_report(process.returncode, output, output))

        timer.connect("timeout()", check)
        timer.start()
        self._deviceDetection = (process, timer)

    # --------------------------------------------------------------------------------- running

    def running(self) -> bool:
        """Whether a run is in progress."""
        return self.activeRun is not None and self.activeRun.process.running

    def volumesProblem(self, parameterNode) -> str:
        """Why the chosen volumes cannot be denoised ('' when they can)."""
        inputNode = parameterNode.inputVolume
        if not inputNode or inputNode.GetImageData() is None:
            return _("Select an input CT volume that holds an image.")
        roles = [parameterNode.outputVolume, parameterNode.noiseVolume]
        if any(node is inputNode for node in roles):
            return _("The output and the removed-noise volumes must not be the input: choose other volumes.")
        if roles[0] is not None and roles[0] is roles[1]:
            return _("The output and the removed-noise volumes must differ: choose another one.")
        return ""

    def denoise(
        self,
        inputNode,
        outputNode=None,
        checkpoint=None,
        strength: float = 1.0,
        device: str = "auto",
        noiseNode=None,
        tta: Union[int, str] = "auto",
        waitForCompletion: bool = True,
        progressCallback: Optional[Callable] = None,
        completedCallback: Optional[Callable] = None,
    ):
        """Denoise ``inputNode`` into ``outputNode`` (a new volume named after the input when None).

        Args:
            inputNode: a scalar volume in HU.
            outputNode: the volume to fill; created (in the input's study, under its transform) on success.
            checkpoint: a model file, or a bundled model's name (``cyclegan``, ``supervised``); None: ``cyclegan``.
            strength: 0..1, applied by blending (the full-strength result is kept for :meth:`setStrength`).
            device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
            noiseNode: optional volume that receives input minus output.
            tta: views of each slice averaged: 1, 2, 4 or 8 (mirrors and 90-degree turns; that many times slower),
                or ``auto``: 8 where the pixels are far coarser than the model's training data, else 1.
            waitForCompletion: block (processing Slicer's events) until the run ends.
            progressCallback: called with each engine event (progress, warning, done, error).
            completedCallback: called with the run when it ends.

        Returns:
            With ``waitForCompletion`` the output node (it raises RuntimeError when the run fails or is
            cancelled); otherwise the :class:`DenoiseRun`.
        """
        if not inputNode or inputNode.GetImageData() is None:
            raise ValueError(_("Select an input volume that holds an image."))
        if outputNode is inputNode or noiseNode is inputNode or (outputNode is not None and outputNode is noiseNode):
            raise ValueError(
                _("The output and the removed-noise volumes must differ from each other and from the input.")
            )
        settings = RunSettings(
            checkpoint, strength, device, tta, waitForCompletion, progressCallback, completedCallback
        )
        array = slicer.util.arrayFromVolume(inputNode)
        return self._run(inputNode, array, self._ijkToRAS(inputNode), outputNode, noiseNode, None, settings)

    def preview(
        self,
        inputNode,
        rasPosition,
        checkpoint=None,
        strength: float = 1.0,
        device: str = "auto",
        tta: Union[int, str] = "auto",
        waitForCompletion: bool = True,
        progressCallback: Optional[Callable] = None,
        completedCallback: Optional[Callable] = None,
    ):
        """Denoise only the axial slice of ``inputNode`` at the world position ``rasPosition`` (a second or two on a CPU).

        The result goes to the input's preview volume (created once, reused), whose other slices are the
        input; a full result in the output volume is left alone. Arguments and return value as in
        :meth:`denoise`.
        """
        from CycleGANDenoiseLib.arrays import axial_axis, slab

        array = slicer.util.arrayFromVolume(inputNode)
        ijkToRAS = self._ijkToRAS(inputNode)
        axis = axial_axis(ijkToRAS)
        worldToLocal = vtk.vtkGeneralTransform()
        slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(None, inputNode.GetParentTransformNode(), worldToLocal)
        rasToIJK = vtk.vtkMatrix4x4()
        inputNode.GetRASToIJKMatrix(rasToIJK)
        ijk = rasToIJK.MultiplyPoint([*worldToLocal.TransformPoint(list(rasPosition)), 1.0])
        index = int(round(ijk[2 - axis]))
        voxels, slabToRAS, where = slab(array, ijkToRAS, axis, index, PREVIEW_SLICES)
        settings = RunSettings(
            checkpoint, strength, device, tta, waitForCompletion, progressCallback, completedCallback
        )
        return self._run(inputNode, voxels, slabToRAS, self._previewNode(inputNode), None, (axis, where), settings)

    def _previewNode(self, inputNode):
        """The existing preview volume of ``inputNode``, or None (one is created on success)."""
        for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"):
            if node.GetAttribute(PREVIEW_ATTRIBUTE) == inputNode.GetID():
                return node
        return None

    def _run(self, inputNode, voxels, ijkToRAS, outputNode, noiseNode, slabInfo, settings):
        """Write ``voxels`` (the whole input, or a Preview slab) and start the engine on them."""
        if self.running():
            raise RuntimeError(_("A denoising run is already in progress: wait for it or cancel it."))
        self._importEngine()
        from CycleGANDenoiseLib.arrays import write_volume_file
        from CycleGANDenoiseLib.command import denoise_command
        from CycleGANDenoiseLib.process import EngineProcess

        from ctdenoise.options import DenoiseOptions

        options = DenoiseOptions(
            strength=float(settings.strength),
            device=settings.device,
            tta=settings.tta if settings.tta == "auto" else int(settings.tta),
        )
        folder = Path(slicer.util.tempDirectory("CycleGANDenoise"))
        try:
            source = write_volume_file(voxels, ijkToRAS, folder / "input.nrrd")
            command = denoise_command(
                self.pythonExecutable(), source, folder / "output.nrrd", options, settings.checkpoint or None
            )

            def launcher(arguments, environment):  # in the run's folder: nothing there can shadow the engine
                return slicer.util.launchConsoleProcess(arguments, updateEnvironment=environment, cwd=str(folder))

            process = EngineProcess(command, self.engineEnvironment(settings.device), launcher)
        except Exception:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        name = f"{inputNode.GetName()} " + (_("preview") if slabInfo else _("denoised"))
        run = DenoiseRun(inputNode, outputNode, noiseNode, options.strength, folder, process, slabInfo, name)
        run.progressCallback, run.completedCallback = settings.progressCallback, settings.completedCallback
        self.activeRun = run
        if settings.waitForCompletion:
            while process.running:
                self._pump(run)
                slicer.app.processEvents()
                time.sleep(POLL_INTERVAL_MS / 1000)
            self._pump(run)
            if run.state != "succeeded":
                raise RuntimeError(_("Denoising {state}: {error}").format(state=run.state, error=run.error))
            return run.outputNode
        run.timer = qt.QTimer()
        run.timer.setInterval(POLL_INTERVAL_MS)
        run.timer.connect("timeout()", lambda: self._pump(run))
        run.timer.start()
        return run

    def _pump(self, run) -> None:
        """Forward the child's new events; finish the run once it ended."""
        for event in run.process.poll():
            if run.progressCallback:
                run.progressCallback(event)
        if not run.process.running and run.folder is not None:
            self._finish(run)

    def cancel(self) -> None:
        """Stop the run in progress at once; no output node is created."""
        run = self.activeRun
        if run is not None and run.process.running:
            run.process.cancel()
            self._finish(run)

    def _finish(self, run) -> None:
        """Bring a successful result into the scene; always remove the temporary files."""
        if run.timer is not None:
            run.timer.stop()
        try:
            if run.state == "succeeded":
                self._importResult(run)
        except Exception as error:
            run.process.state, run.process.error = "failed", str(error)
            logging.error(f"CycleGANDenoise: could not load the result: {error}")
        finally:
            if not self.keepTemporaryFiles:
                shutil.rmtree(run.folder, ignore_errors=True)
            run.folder = None
            if self.activeRun is run:
                self.activeRun = None
        logging.info(f"CycleGANDenoise: run {run.state} after {time.monotonic() - run.process.started_at:.1f} s")
        if run.completedCallback:
            run.completedCallback(run)

    def _importResult(self, run) -> None:
        from CycleGANDenoiseLib.arrays import read_volume_file

        source = slicer.util.arrayFromVolume(run.inputNode).copy()
        if run.slab is None:
            full = read_volume_file(run.folder / "output.nrrd", source.shape)
        else:
            axis, where = run.slab
            index = [slice(None)] * 3
            index[axis] = where
            full = source.copy()
            full[tuple(index)] = read_volume_file(run.folder / "output.nrrd", full[tuple(index)].shape)
        outputNode = run.outputNode or self._newVolumeLike(run.inputNode, run.outputName)
        if run.slab is not None:
            outputNode.SetAttribute(PREVIEW_ATTRIBUTE, run.inputNode.GetID())
        self.clearResults(keepPresent=True)
        self.results[outputNode.GetID()] = KeptResult(outputNode, run.inputNode, source, full.astype(source.dtype))
        run.outputNode = outputNode
        self._placeLike(outputNode, run.inputNode)
        self.setStrength(outputNode, run.strength, run.noiseNode)

    def _newVolumeLike(self, inputNode, name):
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", slicer.mrmlScene.GenerateUniqueName(name))
        node.CopyOrientation(inputNode)
        node.CreateDefaultDisplayNodes()
        return node

    def _placeLike(self, node, inputNode, window=None) -> None:
        """Same geometry, parent transform and study as the input; the input's window (or ``window``)."""
        if node.GetDisplayNode() is None:
            node.CreateDefaultDisplayNodes()
        node.CopyOrientation(inputNode)
        node.SetAndObserveTransformNodeID(inputNode.GetTransformNodeID())
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        parent = shNode.GetItemParent(shNode.GetItemByDataNode(inputNode))
        shNode.SetItemParent(shNode.GetItemByDataNode(node), parent)
        source, target = inputNode.GetDisplayNode(), node.GetDisplayNode()
        if target is not None and (source is not None or window is not None):
            width, level = window or (source.GetWindow(), source.GetLevel())
            target.AutoWindowLevelOff()
            target.SetWindowLevel(width, level)

    def clearResults(self, keepPresent: bool = False) -> None:
        """Forget kept results (all, or with ``keepPresent`` those whose volumes left the scene)."""
        self.results = {
            key: kept
            for key, kept in self.results.items()
            if keepPresent
            and slicer.mrmlScene.IsNodePresent(kept.outputNode)
            and slicer.mrmlScene.IsNodePresent(kept.inputNode)
        }

    def hasResult(self, outputNode) -> bool:
        """Whether a full-strength result of this very ``outputNode`` is kept for live blending."""
        kept = self.results.get(outputNode.GetID()) if outputNode else None
        return kept is not None and kept.outputNode is outputNode

    def setStrength(self, outputNode, strength: float, noiseNode=None) -> None:
        """Show ``strength`` of the kept result in ``outputNode`` (and input minus output in ``noiseNode``)."""
        from CycleGANDenoiseLib.arrays import blend, removed_noise

        if not self.hasResult(outputNode):
            raise ValueError(_("{name} holds no result of this module to blend.").format(name=outputNode.GetName()))
        kept = self.results[outputNode.GetID()]
        output = blend(kept.source, kept.full, strength)
        slicer.util.updateVolumeFromArray(outputNode, output)
        if noiseNode:
            slicer.util.updateVolumeFromArray(noiseNode, removed_noise(kept.source, output))
            self._placeLike(noiseNode, kept.inputNode, NOISE_WINDOW)

    # ----------------------------------------------------------------------------- comparison

    def applyWindowPreset(self, key: str, nodes) -> None:
        """Give every volume in ``nodes`` the preset's window (``custom``: the first one's current window)."""
        from CycleGANDenoiseLib.presets import CUSTOM, preset

        nodes = [n for n in nodes if n and n.GetDisplayNode()]
        if not nodes:
            return
        chosen = None if key == CUSTOM else preset(key)
        first = nodes[0].GetDisplayNode()
        width, level = (first.GetWindow(), first.GetLevel()) if chosen is None else (chosen.width, chosen.level)
        for node in nodes:
            display = node.GetDisplayNode()
            if chosen is not None and chosen.slicer_id:  # Slicer's own CT preset (window, level and grey colours)
                slicer.modules.volumes.logic().ApplyVolumeDisplayPreset(display, chosen.slicer_id)
                continue
            display.AutoWindowLevelOff()
            display.SetWindowLevel(width, level)

    def showSideBySide(self, inputNode, outputNode) -> None:
        """Input in the red view, output in the yellow one, both axial and linked."""
        layoutManager = slicer.app.layoutManager()
        layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView)
        slicer.app.processEvents()  # let the views take their new size before fitting
        for viewName, node in (("Red", inputNode), ("Yellow", outputNode)):
            sliceWidget = layoutManager.sliceWidget(viewName)
            sliceWidget.mrmlSliceNode().SetOrientationToAxial()
            composite = sliceWidget.mrmlSliceCompositeNode()
            composite.SetBackgroundVolumeID(node.GetID())
            composite.SetForegroundVolumeID(None)
            composite.SetLinkedControl(True)
            sliceWidget.sliceLogic().FitSliceToAll()

    def createRoi(self, volumeNode):
        """A small ROI at the centre of the volume, for the noise readout."""
        bounds = [0.0] * 6
        volumeNode.GetRASBounds(bounds)
        roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", _("noise ROI"))
        roi.SetCenter([(bounds[0] + bounds[1]) / 2, (bounds[2] + bounds[3]) / 2, (bounds[4] + bounds[5]) / 2])
        roi.SetSize([20.0, 20.0, 10.0])
        return roi

    def roiStatistics(self, roiNode, volumes) -> dict:
        """{label: {mean, std, voxels}} inside ``roiNode`` for each volume in ``volumes`` ({label: node})."""
        import numpy as np
        from CycleGANDenoiseLib.arrays import roi_box, roi_corners, roi_statistics

        center, size = [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]
        roiNode.GetCenterWorld(center)
        roiNode.GetSizeWorld(size)
        matrix = slicer.util.arrayFromVTKMatrix(roiNode.GetObjectToWorldMatrix())
        axes = matrix[:3, :3] / np.linalg.norm(matrix[:3, :3], axis=0)
        corners = roi_corners(center, size, axes)
        found = {}
        for label, node in volumes.items():
            worldToVolume = vtk.vtkGeneralTransform()
            slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(None, node.GetParentTransformNode(), worldToVolume)
            local = np.array([worldToVolume.TransformPoint(list(c)) for c in corners])
            rasToIJK = vtk.vtkMatrix4x4()
            node.GetRASToIJKMatrix(rasToIJK)
            array = slicer.util.arrayFromVolume(node)
            box = roi_box(slicer.util.arrayFromVTKMatrix(rasToIJK), local, array.shape)
            found[label] = roi_statistics(array, box)
        return found

    @staticmethod
    def _ijkToRAS(node):
        matrix = vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(matrix)
        return slicer.util.arrayFromVTKMatrix(matrix)


#
# Test
#


class CycleGANDenoiseTest(ScriptedLoadableModuleTest):
    """In-Slicer tests on a real CT (two slices of a simulated quarter-dose abdomen shipped with the module).

    They run on the CPU with ONNX Runtime; setUp installs it when missing (Slicer's testing mode
    skips the confirmation), which needs network access once.
    """

    def setUp(self):
        """A clean scene and the CPU runtime."""
        slicer.mrmlScene.Clear()
        self.assertTrue(CycleGANDenoiseLogic().ensureDependencies("cpu", askConfirmation=False))

    def runTest(self):
        """Run every case."""
        for case in (
            self.test_DenoiseKeepsGeometryAndLowersNoise,
            self.test_AveragedViewsDoNotDependOnMirroring,
            self.test_CancelLeavesNoNodeAndNoFiles,
            self.test_ModelThatIsNotAModelIsRefused,
            self.test_SupervisedModelIsBundled,
        ):
            self.setUp()
            case()

    def _sample(self):
        path = Path(__file__).resolve().parent / "Resources" / "Testing" / "abdomen_quarter_dose_2slices.nrrd"
        return slicer.util.loadVolume(str(path), {"show": False})

    def test_DenoiseKeepsGeometryAndLowersNoise(self):
        """Denoise on the CPU: geometry, transform and study kept, input unchanged, liver noise falls, strength blends."""
        import numpy as np

        self.delayDisplay("Denoising a real quarter-dose CT on the CPU")
        inputNode = self._sample()
        before = slicer.util.arrayFromVolume(inputNode).copy()
        transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
        inputNode.SetAndObserveTransformNodeID(transform.GetID())
        logic = CycleGANDenoiseLogic()
        outputNode = logic.denoise(inputNode, device="cpu")
        after = slicer.util.arrayFromVolume(outputNode)
        self.assertEqual(after.shape, before.shape)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(inputNode), before)
        inputMatrix, outputMatrix = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        inputNode.GetIJKToRASMatrix(inputMatrix)
        outputNode.GetIJKToRASMatrix(outputMatrix)
        for row in range(4):
            for column in range(4):
                self.assertAlmostEqual(inputMatrix.GetElement(row, column), outputMatrix.GetElement(row, column), 5)
        self.assertEqual(outputNode.GetTransformNodeID(), transform.GetID())
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        self.assertEqual(
            shNode.GetItemParent(shNode.GetItemByDataNode(outputNode)),
            shNode.GetItemParent(shNode.GetItemByDataNode(inputNode)),
        )
        liver = (slice(None), slice(240, 270), slice(130, 170))
        self.assertLess(after[liver].std(), 0.75 * before[liver].std())
        self.assertLess(abs(float(after[liver].mean()) - float(before[liver].mean())), 3.0)
        logic.setStrength(outputNode, 0.0)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(outputNode), before)
        self.delayDisplay("Test passed")

    def test_AveragedViewsDoNotDependOnMirroring(self):
        """With 8 averaged views, the result of the left-right mirrored input is the mirrored result."""
        import numpy as np

        self.delayDisplay("Denoising a CT and its mirror image, averaging 8 views")
        inputNode = self._sample()
        mirroredNode = slicer.modules.volumes.logic().CloneVolume(slicer.mrmlScene, inputNode, "mirrored")
        slicer.util.updateVolumeFromArray(mirroredNode, slicer.util.arrayFromVolume(inputNode)[:, :, ::-1].copy())
        logic = CycleGANDenoiseLogic()
        plain = slicer.util.arrayFromVolume(logic.denoise(inputNode, device="cpu", tta=AVERAGED_VIEWS)).copy()
        mirrored = slicer.util.arrayFromVolume(logic.denoise(mirroredNode, device="cpu", tta=AVERAGED_VIEWS))
        self.assertLessEqual(float(np.abs(mirrored[:, :, ::-1].astype(float) - plain).max()), 1.0)  # int16 rounding
        self.delayDisplay("Test passed")

    def test_CancelLeavesNoNodeAndNoFiles(self):
        """Cancel while slices remain: no new volume, no temporary folder, no engine left running."""
        inputNode = self._sample()
        volumesBefore = slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
        logic = CycleGANDenoiseLogic()
        events = []
        run = logic.denoise(inputNode, device="cpu", waitForCompletion=False, progressCallback=events.append)
        folder = run.folder
        deadline = time.monotonic() + 120
        while run.state == "running" and not any(e.kind == "started" for e in events):
            slicer.app.processEvents()
            time.sleep(0.02)
            self.assertLess(time.monotonic(), deadline)
        self.assertEqual(run.state, "running", run.error)
        logic.cancel()
        self.assertEqual(run.state, "cancelled")
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"), volumesBefore)
        self.assertFalse(folder.exists())
        self.assertFalse(logic.running())

    def test_ModelThatIsNotAModelIsRefused(self):
        """A file that is not a model gets the engine's one-line reason."""
        path = Path(slicer.util.tempDirectory("CycleGANDenoiseTest")) / "notes.safetensors"
        path.write_text("not a model")
        text, valid = CycleGANDenoiseLogic().modelDescription(str(path))
        self.assertFalse(valid)
        self.assertIn("damaged or not a model", text)
        shutil.rmtree(path.parent, ignore_errors=True)

    def test_SupervisedModelIsBundled(self):
        """The second bundled model is described by name, and denoising with it lowers the liver noise."""
        import numpy as np

        logic = CycleGANDenoiseLogic()
        self.assertEqual(logic.bundledModels(), ["cyclegan", "supervised"])
        text, valid = logic.modelDescription("supervised")
        self.assertTrue(valid, text)
        self.assertIn("ctdenoise_supervised_v5.safetensors", text)
        inputNode = self._sample()
        before = slicer.util.arrayFromVolume(inputNode).copy()
        after = slicer.util.arrayFromVolume(logic.denoise(inputNode, checkpoint="supervised", device="cpu"))
        liver = (slice(None), slice(240, 270), slice(130, 170))
        self.assertLess(float(np.std(after[liver])), 0.75 * float(np.std(before[liver])))
        self.assertLess(abs(float(after[liver].mean()) - float(before[liver].mean())), 3.0)
        self.delayDisplay("Test passed")
