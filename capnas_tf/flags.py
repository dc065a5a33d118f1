"""The command line of `python -m capnas_tf.train`, generated from the config dataclasses.

Every flag is a field of a config (`capnas_tf.config`): its name, help and choices are the field's
`Flag` (`config.option`), its default is the field's default, and `*_config_from_flags` read the
fields back. Two flags belong to no config: --mode (which job runs) and --plugins (modules imported
before the configs are built, so that the strategies, datasets, decoders, … they register can be
chosen by name). Only entry points import this module; library code receives configs.

The flags are defined in sections (run, data, search, retrain, export; `HELP_SECTIONS`), which is how
`--help` lists them (`use_sectioned_help`); `--helpfull` adds the flags of every library.
"""
from __future__ import annotations

import dataclasses
import importlib
import re
import sys
from typing import Mapping, NamedTuple, Sequence

from absl import app, flags

from capnas_tf.config import (ConfigError, DataConfig, Flag, RetrainConfig, RunConfig, SearchConfig, SupernetConfig,
                              flag_of)

FLAGS = flags.FLAGS


class HelpSection(NamedTuple):
    heading: str
    flags: tuple[str, ...]


# The sections of --help, in order: name → heading.
SECTION_HEADINGS = {
    "run": "run (every --mode)",
    "data": "data (every --mode)",
    "search": "search (--mode=search | pipeline)",
    "retrain": "retrain and evaluation (--mode=retrain | pipeline)",
    "export": "export of the retrained captioner (--mode=retrain | pipeline)",
}
# Each config's section; RetrainConfig's export_* fields go to "export".
CONFIG_SECTIONS = ((RunConfig, "run"), (DataConfig, "data"), (SearchConfig, "search"), (SupernetConfig, "search"),
                   (RetrainConfig, "retrain"))


def _section_of(config: type, field: str) -> str:
    section = dict(CONFIG_SECTIONS)[config]
    return "export" if config is RetrainConfig and field.startswith("export_") else section


class _FloatListParser(flags.ListParser):
    """Comma-separated numbers ("0.8,0.1,0.1") → a list of floats; their range is the config's to check."""

    def __init__(self):
        super().__init__()
        self.syntactic_help = "comma-separated numbers"

    def parse(self, argument):
        items = super().parse(argument)
        try:
            return [float(item) for item in items]
        except (TypeError, ValueError):
            raise ValueError(f"expected comma-separated numbers such as 0.8,0.1,0.1, received {argument!r}") from None


def _define(field: dataclasses.Field, spec: Flag) -> None:
    """The absl flag of a config field: its kind from the field's type, its default the field's."""
    default = field.default if spec.unparse is None else spec.unparse(field.default)
    kind = field.type.replace(" | None", "")
    help_text = spec.help
    if spec.registry:  # open: checked against the registry when the config is built, after --plugins
        help_text += f" Registered: {', '.join(spec.choices())} (--plugins may register more)."
    if spec.choices is not None and not spec.registry:
        flags.DEFINE_enum(spec.name, default, list(spec.choices()), help_text)
    elif kind == "str":
        flags.DEFINE_string(spec.name, default, help_text)
    elif kind == "bool":
        flags.DEFINE_bool(spec.name, default, help_text)
    elif kind == "int":
        flags.DEFINE_integer(spec.name, default, help_text)
    elif kind == "float":
        flags.DEFINE_float(spec.name, default, help_text)
    elif kind.startswith("tuple[float"):
        flags.DEFINE(_FloatListParser(), spec.name, None if default is None else list(default), help_text,
                     serializer=flags.CsvListSerializer(","))
    elif kind.startswith("tuple"):
        flags.DEFINE_list(spec.name, None if default is None else list(default), help_text)
    else:
        raise TypeError(f"{field.name}: no flag for a field of type {field.type!r}")


def config_flags(config: type) -> dict[str, Flag]:
    """{field: its `Flag`} of the fields of a config class that the command line sets."""
    return {field.name: spec for field in dataclasses.fields(config) if (spec := flag_of(field)) is not None}


# -- the flags ---------------------------------------------------------------------------------------
_sections: dict[str, list[str]] = {name: [] for name in SECTION_HEADINGS}
flags.DEFINE_enum("mode", "search", ["search", "retrain", "pipeline"],
                  "search: three-stage (or baseline) search → genotype.json; retrain: train the captioner "
                  "of --genotype from scratch, evaluate, export; pipeline: search, then retrain its genotype.")
flags.DEFINE_list("plugins", [], "Python modules to import before the configs are built (e.g. my_lab.strategies): "
                  "the search strategies, datasets, decoders, encoders they register can then be chosen by name.")
_sections["run"] += ["mode", "plugins"]
for _config, _ in CONFIG_SECTIONS:
    for _field in dataclasses.fields(_config):
        _spec = flag_of(_field)
        if _spec is not None and _spec.defined:
            _define(_field, _spec)
            _sections[_section_of(_config, _field.name)].append(_spec.name)

# name → the heading and flags of a section, in the order they are defined.
HELP_SECTIONS: dict[str, HelpSection] = {name: HelpSection(SECTION_HEADINGS[name], tuple(names))
                                         for name, names in _sections.items()}
del _sections, _config, _field, _spec

# For each config built from flags: field → the flag that sets it. `describe_config_error` reads them
# backwards to name the flag behind a config error.
RUN_FLAGS, DATA_FLAGS, SEARCH_FLAGS, SUPERNET_FLAGS, RETRAIN_FLAGS = (
    {field: spec.name for field, spec in config_flags(config).items()}
    for config in (RunConfig, DataConfig, SearchConfig, SupernetConfig, RetrainConfig))
CONFIG_FLAGS = {"RunConfig": RUN_FLAGS, "SearchConfig": SEARCH_FLAGS, "SupernetConfig": SUPERNET_FLAGS,
                "DataConfig": DATA_FLAGS, "RetrainConfig": RETRAIN_FLAGS}
# (config class name, field) → flag name.
FLAG_OF_FIELD = {(config, field): flag for config, table in CONFIG_FLAGS.items() for field, flag in table.items()}


# -- flags → configs ---------------------------------------------------------------------------------
def _fields_from_flags(config: type) -> dict:
    fields = {}
    for field, spec in config_flags(config).items():
        value = FLAGS[spec.name].value
        fields[field] = spec.parse(value) if spec.parse else value
    return fields


def run_config_from_flags() -> RunConfig:
    return RunConfig(**_fields_from_flags(RunConfig))


def data_config_from_flags() -> DataConfig:
    return DataConfig(**_fields_from_flags(DataConfig))


def search_config_from_flags() -> SearchConfig:
    supernet = SupernetConfig(**_fields_from_flags(SupernetConfig))
    return SearchConfig(**_fields_from_flags(SearchConfig), supernet=supernet)


def retrain_config_from_flags() -> RetrainConfig:
    if FLAGS.mode == "pipeline" and FLAGS.retrain_encoder != "darts":
        raise ValueError(f"--retrain_encoder={FLAGS.retrain_encoder} cannot be used with --mode=pipeline, which "
                         "retrains the searched genotype (encoder darts); use --mode=retrain for a fixed encoder.")
    return RetrainConfig(**_fields_from_flags(RetrainConfig))


def import_plugins() -> None:
    """Imports the modules of --plugins (they register their parts); a ValueError naming the flag for one
    that cannot be imported."""
    for name in FLAGS.plugins:
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise ValueError(f"--plugins: cannot import {name!r}: {error}") from error


def configs_from_flags() -> dict:
    """Every config of `capnas_tf.jobs.run`, from the parsed flags, after importing --plugins; a ValueError
    (see `describe_config_error`) if any is out of range, names what no registry holds, or the search's
    precision settings do not go together (`precision.check_precision`, which the search would only run
    after reading the data). Builds nothing and reads no data."""
    from capnas_tf.search.precision import check_precision

    import_plugins()
    configs = dict(run=run_config_from_flags(), data=data_config_from_flags(), search=search_config_from_flags(),
                   retrain=retrain_config_from_flags())
    check_precision(configs["search"])
    return configs


# -- config errors on the command line ---------------------------------------------------------------
# "RetrainConfig.lr must be > 0, received -1.0." — the form of the errors that are not `ConfigError`s.
_FIELD_MESSAGE = re.compile(r"^(?P<config>\w+Config)\.(?P<field>\w+)\b\s*(?P<expected>.*?)"
                            r"(?:[,;]\s*received .*)?$", re.DOTALL)


def describe_config_error(error: ValueError) -> str:
    """`--flag=value: what was expected` for the error of a config built from flags (a `ConfigError`,
    or a ValueError whose message starts `SomeConfig.field …`); its message as it is otherwise."""
    if isinstance(error, ConfigError):
        config, field, expected = error.config, error.field, f"must be {error.expected}"
        for other in error.related:  # "< epochs (4)" → "< --search_epochs (4)"
            if (config, other) in FLAG_OF_FIELD:
                expected = re.sub(rf"\b{other}\b", f"--{FLAG_OF_FIELD[config, other]}", expected)
    else:
        match = _FIELD_MESSAGE.match(str(error))
        if not match:
            return str(error)
        config, field, expected = match["config"], match["field"], match["expected"].rstrip(".")
    flag = FLAG_OF_FIELD.get((config, field))
    if flag is None:  # a field no flag sets
        value = error.value if isinstance(error, ConfigError) else "?"
        return f"{config}.{field}={value!r}: {expected}"
    return f"{FLAGS[flag].serialize() or f'--{flag} (not set)'}: {expected}"


# -- --help ------------------------------------------------------------------------------------------
def sectioned_help(sections: Mapping[str, Sequence[str]]) -> str:
    """absl's listing of the flags of each section under its heading ({heading: flag names})."""
    parts = []
    for heading, names in sections.items():
        for name in names:  # key flags of a pseudo-module named like the heading: absl renders them
            FLAGS.register_key_flag_for_module(heading, FLAGS[name])
        parts.append(FLAGS.module_help(heading))
    return "\n".join(parts)


def use_sectioned_help(sections: Mapping[str, Sequence[str]] | None = None) -> None:
    """Makes `--help` (`-?`, `--helpshort`) print the entry point's docstring and `sectioned_help(sections)`
    (default: every `HELP_SECTIONS`) instead of absl's list of the main module's own flags. `--helpfull`
    still lists every flag of every module. Call before `app.run`."""
    if sections is None:
        sections = {section.heading: section.flags for section in HELP_SECTIONS.values()}

    def show_help():
        doc = sys.modules["__main__"].__doc__ or f"\nUSAGE: {sys.argv[0]} [flags]\n"
        sys.stdout.write(f"{doc}\nflags:\n{sectioned_help(sections)}\n\nTry --helpfull to get a list of all flags.\n")
        sys.exit(1)  # as absl's --help

    class SectionedHelpFlag(app.HelpFlag):
        def parse(self, argument):
            if self._parse(argument):
                show_help()

    class SectionedHelpshortFlag(SectionedHelpFlag):
        NAME, SHORT_NAME = "helpshort", None

    app.define_help_flags()  # absl's, so that app.run does not define them again
    for name in ("help", "?", "helpshort"):
        if name in FLAGS:
            delattr(FLAGS, name)
    for flag in (SectionedHelpFlag(), SectionedHelpshortFlag()):
        flags.DEFINE_flag(flag, module_name="absl.app")
