"""The Slicer module checked statically (Slicer cannot run here): API names, .ui, parameters, CMake lists, catalog."""

from __future__ import annotations

import ast
import json
import re
import struct
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

API = Path(__file__).resolve().parent / "slicer_api"
"""The Slicer API index and checker, copied from the shared folder (see its README)."""
SHARED = Path(__file__).resolve().parents[2] / "shared" / "slicer-api"
MODULE = "CycleGANDenoise"
QT_WIDGETS = {"QWidget", "QLabel", "QPushButton", "QComboBox", "QProgressBar", "QPlainTextEdit", "QCheckBox"}
QT_PROPERTIES = {
    "text",
    "toolTip",
    "geometry",
    "visible",
    "enabled",
    "maximumSize",
    "wordWrap",
    "textInteractionFlags",
    "readOnly",
    "placeholderText",
    "textVisible",
    "value",
    "orientation",
    "sizeHint",
}
"""Standard Qt widget properties the .ui sets (inherited by the CTK and MRML widgets too)."""
CATALOG_FIELDS = {
    "$schema",
    "category",
    "scm_url",
    "scm_revision",
    "scm_type",
    "build_dependencies",
    "dicom_support_rule",
    "build_subdirectory",
    "enabled",
    "tier",
}
"""Slicer ExtensionsIndex catalog entry schema v1.0.2: the only fields it allows."""
HEAVY = {"torch", "onnxruntime", "monai", "numpy", "SimpleITK", "ctdenoise", "safetensors", "PyTorchUtils"}


@pytest.fixture(scope="module")
def index() -> dict:
    return json.loads((API / "slicer_api_index.json").read_text())


@pytest.fixture(scope="module")
def source(module_dir: Path) -> ast.Module:
    return ast.parse((module_dir / f"{MODULE}.py").read_text())


@pytest.fixture(scope="module")
def ui(module_dir: Path) -> ElementTree.Element:
    return ElementTree.parse(module_dir / "Resources" / "UI" / f"{MODULE}.ui").getroot()


def test_the_copied_checker_is_the_shared_one() -> None:
    """Where the shared folder sits beside the checkout, the copy here must not have drifted from it."""
    for name in ("check_slicer_api.py", "slicer_api_index.json"):
        shared = SHARED / name
        assert not shared.is_file() or shared.read_bytes() == (API / name).read_bytes(), name


def test_the_api_checker_passes_for_slicer_5_10(module_dir: Path) -> None:
    checker = API / "check_slicer_api.py"
    done = subprocess.run(
        [sys.executable, str(checker), str(module_dir / f"{MODULE}.py"), "--min-slicer", "5.10", "--json"],
        capture_output=True,
        text=True,
    )
    report = json.loads(done.stdout)
    assert done.returncode == 0 and report["unknown"] == [] and report["warnings"] == [], done.stdout


def test_the_ui_widgets_exist_in_slicer_and_its_properties_too(ui: ElementTree.Element, index: dict) -> None:
    known = set(index["widgets"]["qMRML_widget_classes_Libs_MRML_Widgets"]) | set(
        index["widgets"]["ctk_widget_classes_CTK"]
    )
    assert ui.find("widget").get("class") == "qMRMLWidget"
    for widget in ui.iter("widget"):
        kind = widget.get("class")
        assert kind in known or kind in QT_WIDGETS, f"{widget.get('name')}: {kind} is not a Slicer, CTK or Qt widget"
        api = index["qt_widget_api"].get(kind)
        for prop in widget.findall("property"):
            name = prop.get("name")
            if name == "SlicerParameterName":
                assert prop.get("stdset") == "0"
                continue
            if api is not None:
                assert name in api["properties"] or name in QT_PROPERTIES, f"{kind}.{name} does not exist"
            else:
                assert name in QT_PROPERTIES, f"{kind}.{name} is not a property this test knows"
    receivers = {c.findtext("receiver") for c in ui.iter("connection")}
    combos = {w.get("name") for w in ui.iter("widget") if w.get("class") == "qMRMLNodeComboBox"}
    assert combos and combos <= receivers  # every node selector gets the scene


def test_every_ui_name_the_code_uses_exists_and_every_parameter_matches(
    ui: ElementTree.Element, source: ast.Module
) -> None:
    names = {w.get("name") for w in ui.iter("widget")}
    used = {
        node.attr
        for node in ast.walk(source)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "ui"
    }
    assert used and used <= names, f"self.ui names missing from the .ui: {sorted(used - names)}"
    wrapper = next(n for n in source.body if isinstance(n, ast.ClassDef) and n.name == f"{MODULE}ParameterNode")
    parameters = {s.target.id for s in wrapper.body if isinstance(s, ast.AnnAssign)}
    bound = {p.findtext("string") for p in ui.iter("property") if p.get("name") == "SlicerParameterName"}
    assert bound == parameters, (bound, parameters)


def test_user_visible_strings_are_translatable(source: ast.Module) -> None:
    """Messages shown to users go through _(); f-strings never sit inside _() (placeholders are .format'ed)."""
    for node in ast.walk(source):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "_":
            assert node.args and isinstance(node.args[0], ast.Constant), ast.unparse(node)
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("errorDisplay", "confirmOkCancelDisplay", "delayDisplay")
            and node.args
        ):
            first = node.args[0]
            is_tr = isinstance(first, ast.Call) and (
                (isinstance(first.func, ast.Name) and first.func.id == "_")
                or (isinstance(first.func, ast.Attribute) and first.func.attr == "format")
            )
            assert is_tr or node.func.attr == "delayDisplay", ast.unparse(node)


def test_nothing_heavy_is_imported_when_the_module_loads(source: ast.Module) -> None:
    for node in source.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            assert not {n.split(".")[0] for n in names} & HEAVY, ast.unparse(node)


def _cmake_list(text: str, variable: str) -> list[str]:
    found = re.search(rf"set\({variable}\n(.*?)\n\s*\)", text, re.S)
    assert found, variable
    return [line.strip().replace("${MODULE_NAME}", MODULE) for line in found.group(1).splitlines() if line.strip()]


def test_every_file_of_the_module_and_the_engine_is_listed_in_cmake(module_dir: Path, root: Path) -> None:
    text = (module_dir / "CMakeLists.txt").read_text()
    scripts, resources = _cmake_list(text, "MODULE_PYTHON_SCRIPTS"), _cmake_list(text, "MODULE_PYTHON_RESOURCES")
    present = {
        str(p.relative_to(module_dir))
        for p in module_dir.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.name != "CMakeLists.txt"
    }
    assert sorted(scripts + resources) == sorted(present)
    assert all((module_dir / s).is_file() for s in scripts + resources)
    assert "WITH_GENERIC_TESTS" in text and "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    engine = root / "training" / "src"
    engine_files = {
        str(p.relative_to(engine))
        for p in (engine / "ctdenoise").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    listed = _cmake_list(text, "ENGINE_PYTHON_SCRIPTS") + _cmake_list(text, "ENGINE_PYTHON_RESOURCES")
    assert sorted(listed) == sorted(engine_files)
    top = (root / "CMakeLists.txt").read_text()
    for needed in (
        "project(CycleGANDenoise)",
        'set(EXTENSION_DEPENDS "PyTorch")',
        "find_package(Slicer REQUIRED)",
        "add_subdirectory(CycleGANDenoise)",
        "${Slicer_EXTENSION_GENERATE_CONFIG}",
        "${Slicer_EXTENSION_CPACK}",
    ):
        assert needed in top, needed


def test_the_catalog_entry_has_only_schema_fields(root: Path) -> None:
    entry = json.loads((root / f"{MODULE}.json").read_text())
    assert set(entry) <= CATALOG_FIELDS and {"$schema", "category", "scm_url"} <= set(entry)
    assert entry["build_dependencies"] == ["PyTorch"] and entry["category"] == "Filtering"
    assert isinstance(entry["tier"], int) and 1 <= entry["tier"] <= 5
    assert entry["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.2.json#")


@pytest.mark.parametrize(
    "icon", ["Resources/Icons/CycleGANDenoise.png", "CycleGANDenoise/Resources/Icons/CycleGANDenoise.png"]
)
def test_icons_are_128_pixel_pngs(root: Path, icon: str) -> None:
    data = (root / icon).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", data[16:24]) == (128, 128)
