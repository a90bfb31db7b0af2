"""Request options and response bodies of the HTTP API (also its OpenAPI schema)."""

from __future__ import annotations

import dataclasses
import typing
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, create_model, model_validator

from lost_reg import masks as mask_tools
from lost_reg.backbone import FeatureKind
from lost_reg.export import LABEL_STUDIO_PREFIX, MASK_FORMATS_WRITTEN, RENDERERS
from lost_reg.methods import METHODS, all_option_specs
from lost_reg.pipeline import Detection
from lost_reg.refine import REFINERS


class ErrorBody(BaseModel):
    code: str = Field(description="stable machine-readable reason, e.g. file_too_large")
    message: str = Field(description="what went wrong and what to do, for humans")


class ErrorResponse(BaseModel):
    error: ErrorBody


class Closed(BaseModel):
    """A request body or form that refuses fields it does not know (422) rather than ignoring them."""

    model_config = ConfigDict(extra="forbid")


class _BoxOptions(Closed):
    """Optional form fields of ``POST /v1/boxes``; unset ones take the server's defaults."""

    method: Literal[tuple(METHODS)] | None = Field(  # type: ignore[valid-type]
        None, description="discovery method; its options below default to the server's when it is the "
                          "server's method, else to the backbone recipe's")
    features: FeatureKind | None = Field(None, description="which features build the method's graph")
    max_side: int | None = Field(None, ge=1, description="downscale so the longer side is at most this (from the "
                                                         "patch size to the server's max_side)")
    max_objects: int | None = Field(None, ge=1, description="objects per image, at most (default: the server's "
                                                            "max_objects; up to its max_objects_limit); with more "
                                                            "than one, the answer lists them in objects")
    masks: Literal[MASK_FORMATS_WRITTEN] | None = Field(  # type: ignore[valid-type]
        None, description="add each object's pixel mask in original pixels as segmentation: COCO RLE (rle) or COCO "
                          "polygons (polygon)")
    refine: Literal[tuple(REFINERS)] | None = Field(  # type: ignore[valid-type]
        None, description="with masks: how the patch grid becomes pixels (default: the server's refine)")
    return_mask: bool = Field(False, description="add the object's patch-grid mask as COCO RLE")
    return_heat: bool = Field(False, description="add the method's heat map on the patch grid as a PNG")


_PYDANTIC = {"minimum": "ge", "maximum": "le", "exclusiveMinimum": "gt", "exclusiveMaximum": "lt", "pattern": "pattern"}

BoxOptions = create_model(
    "BoxOptions", __base__=_BoxOptions, __doc__=_BoxOptions.__doc__,
    **{name: ((Literal[spec.choices] if spec.choices else spec.type) | None,
              Field(None, description=f"{spec.help} [{', '.join(owners)}]",
                    **{_PYDANTIC[k]: v for k, v in spec.bounds.items()}))
       for name, (spec, owners) in all_option_specs().items()},
)
"""The request options: :class:`_BoxOptions` plus one optional field per method option, with its bounds."""

IMAGE_TYPES = "image/png, image/jpeg, image/webp, image/tiff, image/bmp, image/gif"


def boxes_request_schema(max_files: int, max_side: tuple[int, int], default_method: str,
                         max_objects: int) -> dict[str, Any]:
    """OpenAPI body of ``POST /v1/boxes``, saying what the server enforces: 1 to ``max_files`` images, the
    ``max_side`` range, at most ``max_objects`` objects, each option's bounds, no other field, and which
    options go with which method (``dependentSchemas``: an option of another method than ``default_method``
    needs ``method``)."""
    properties: dict[str, Any] = {
        "images": {"type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1,
                   "maxItems": max_files, "description": "one or more image files (JPEG, PNG, WebP, TIFF, BMP, GIF)"},
    }
    for name, field in BoxOptions.model_json_schema()["properties"].items():
        plain = next((v for v in field.get("anyOf", [field]) if v.get("type") != "null"), field)  # a form field
        if "const" in plain:  # a choice of one (pydantic's const) is an enum of one, as for choices of several
            plain = {**{k: v for k, v in plain.items() if k != "const"}, "enum": [plain["const"]]}
        properties[name] = {**plain, **{k: v for k, v in field.items() if k in ("description", "default")}}
    properties["max_side"].update(minimum=max_side[0], maximum=max_side[1])  # is either absent or a string
    properties["max_objects"].update(maximum=max_objects)
    dependent = {}
    for name, (spec, owners) in all_option_specs().items():
        if set(owners) != set(METHODS):
            only = {"properties": {"method": {"enum": owners}}}
            dependent[name] = only if default_method in owners else {**only, "required": ["method"]}
    schema = {"type": "object", "required": ["images"], "properties": properties, "additionalProperties": False,
              "dependentSchemas": dependent}
    content = {"schema": schema, "encoding": {"images": {"contentType": IMAGE_TYPES}}}
    return {"required": True, "content": {"multipart/form-data": content}}


class Mask(BaseModel):
    """COCO run-length encoding (pycocotools.mask) of a bool [rows, cols] mask."""

    size: tuple[int, int] = Field(description="rows, cols (for a pixel mask: the image's height, width)")
    counts: str = Field(description="COCO's compressed RLE string (column-major runs)")


Polygons = list[list[float]]
"""COCO polygons: ``[x0, y0, x1, y1, …]`` flat lists in pixels, vertices on pixel corners."""
SEGMENTATION = ("the object's pixel mask in original pixels (with masks): COCO RLE, or COCO polygons "
                "([x0, y0, x1, y1, …] lists, vertices on pixel corners, holes filled)")


def detection_fields(*names: str) -> dict[str, Any]:
    """Response fields taken from the library's box in pixels (:class:`~lost_reg.pipeline.Detection`): its types
    (a value the service always has, so not optional) and descriptions."""
    hints = typing.get_type_hints(Detection)
    meta = {f.name: f.metadata for f in dataclasses.fields(Detection)}
    out = {}
    for name in names:
        kind, args = hints[name], typing.get_args(hints[name])
        if type(None) in args:
            kind = next(a for a in args if a is not type(None))
        out[name] = (kind, Field(description=meta[name]["description"]) if "description" in meta[name] else ...)
    return out


ObjectResult = create_model(
    "ObjectResult",
    **detection_fields("box", "score", "seed"),
    segmentation=(Mask | Polygons | None, Field(None, description=SEGMENTATION)),
)
"""One object of an image: its box, score, seed and (with ``masks``) pixel mask."""

BoxResult = create_model(
    "BoxResult",
    filename=(str, ...),
    **detection_fields("width", "height"),
    **{name: (kind | None, Field(None, description=f"{info.description}; the best object's (objects[0]), absent "
                                                   "only for an image without one"))
       for name, (kind, info) in detection_fields("box", "score", "seed").items()},
    segmentation=(Mask | Polygons | None, Field(None, description=SEGMENTATION)),
    objects=(list[ObjectResult] | None, Field(None, description="with max_objects over 1: every object found, "
                                                                "best first (the fields above repeat the first)")),
    ms=(float, Field(description="milliseconds from reading this file to its box (decoding and queueing included)")),
    mask=(Mask | None, Field(None, description="with return_mask: the object's patches on the grid")),
    heat=(str | None, Field(None, description="with return_heat: base64 PNG, one pixel per grid cell, the method's "
                                              "evidence in TURBO colours (LOST: 1/degree; TokenCut: the eigenvector; "
                                              "bright = object-like), scaled between its 1st and 99th percentiles")),
    grid=(tuple[int, int] | None, Field(None, description="with return_mask or return_heat: rows, cols of the "
                                                          "patch grid (it may reach past the image: padding)")),
    cell_px=(tuple[float, float] | None, Field(None, description="with return_mask or return_heat: original pixels "
                                                                 "per grid cell, (width, height)")),
)
"""One file's answer: the detection's fields (:func:`detection_fields`) and the service's own."""


class FileError(BaseModel):
    filename: str
    error: ErrorBody


class BoxesResponse(BaseModel):
    backbone: str
    results: list[BoxResult | FileError] = Field(description="one item per uploaded file, in upload order")


class Readiness(BaseModel):
    status: Literal["ready"]
    images_in_flight: int = Field(description="images held now, each from its first byte to its answer")
    max_queue: int = Field(description="images held at most: past it, requests get 503 and so does /readyz")


class ModelInfo(BaseModel):
    backbone: str
    patch_size: int
    registers: int = Field(description="register tokens after CLS, trained and test-time")
    test_time_registers: int = Field(description="of those, registers added at test time (0: none)")
    features: str
    layer: int
    device: str
    dtype: str
    method: str = Field(description="the default method with its options, e.g. tokencut(tau=0.2, eps=1e-05, …)")
    defaults: dict[str, Any] = Field(description="method, method options, features and max_side used when a "
                                                 "request sets none")
    limits: dict[str, Any] = Field(description="request limits")


def _json_integer(value: Any) -> Any:
    """Refuse what JSON Schema's "integer" refuses (true, "5") before pydantic's lax int would take it."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be an integer")
    return value


JsonInt = Annotated[int, BeforeValidator(_json_integer)]  # 4272.0 is an integer in JSON Schema; 4272.5 is not
JsonNumber = Annotated[float, Strict()]  # an int or a float, never true or "0.5"


class ExportedMask(Closed):
    """COCO compressed RLE of an object's mask, as ``/v1/boxes`` answers with ``masks=rle``."""

    size: tuple[JsonInt, JsonInt] = Field(description="the image's height, width")
    counts: str = Field(max_length=16 * 2**20, description="COCO's compressed RLE string (column-major runs)")


class ExportedObject(Closed):
    box: tuple[JsonInt, JsonInt, JsonInt, JsonInt] = Field(description="x0, y0, x1, y1 in pixels, max exclusive, inside the image")
    score: JsonNumber = Field(0.0, ge=0, le=1)
    segmentation: ExportedMask | None = Field(None, description="the object's pixel mask, COCO RLE of the image's "
                                                                "size (what /v1/boxes answers with masks=rle)")


class ExportedImage(Closed):
    file_name: str = Field(min_length=1, max_length=1024)
    width: JsonInt = Field(ge=1, le=1_000_000)
    height: JsonInt = Field(ge=1, le=1_000_000)
    objects: list[ExportedObject] = Field(default_factory=list, max_length=100)

    @model_validator(mode="after")
    def _boxes_inside(self) -> ExportedImage:
        for o in self.objects:
            x0, y0, x1, y1 = o.box
            if not (0 <= x0 < x1 <= self.width and 0 <= y0 < y1 <= self.height):
                raise ValueError(f"{self.file_name}: box {list(o.box)} is not inside the {self.width}×{self.height} image")
            if o.segmentation is not None:
                rle = {"size": list(o.segmentation.size), "counts": o.segmentation.counts}
                try:
                    mask_tools.check(rle, (self.height, self.width))
                except ValueError as e:
                    raise ValueError(f"{self.file_name}: segmentation of box {list(o.box)}: {e}") from None
        return self


class ExportRequest(Closed):
    """Boxes (e.g. a session of the web page) to turn into a file of one of the one-file export formats."""

    format: Literal[tuple(RENDERERS)] = Field(description="as lost-reg discover --format")  # type: ignore[valid-type]
    images: list[ExportedImage] = Field(min_length=1, max_length=10_000)
    image_url_prefix: str = Field(LABEL_STUDIO_PREFIX, max_length=1024,
                                  description="labelstudio: put before each file name to make its image URL")
    model_version: str | None = Field(None, max_length=1024, description="labelstudio: the predictions' model "
                                                                          "version (default: the server's model)")
    mask_format: Literal[MASK_FORMATS_WRITTEN] = Field(  # type: ignore[valid-type]
        "rle", description="coco: segmentation as RLE or polygons; labelstudio: brush or polygon results (from a "
                           "control named mask)")
