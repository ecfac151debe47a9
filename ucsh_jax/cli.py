"""What every command-line entry point shares: clean user errors, absolute paths, quiet logs.

  def main(argv):
    config = cli.resolve_config(_CONFIG.value)   # paths made absolute, a bad file named
    ...
  if __name__ == "__main__":
    cli.run(main)

`run` replaces `absl.app.run`. A `UserError` (raised where a problem with the user's input is
found), a flag the command does not know, a mistyped config field or a config file that does not
load is printed as `error: <message>` (plus at most one hint line) and exits with status 2.
Anything else is an internal failure and keeps its full traceback (status 1). `--verbose` shows
the traceback of every error.
"""

import copy
import logging as std_logging
import os
import sys
from typing import Any, Callable, List, NoReturn, Optional, Sequence

from absl import app
from absl import flags
from absl import logging
import ml_collections

from ucsh_jax import errors
from ucsh_jax.models import download

USER_ERROR_STATUS = 2
_VERBOSE = flags.DEFINE_bool("verbose", False,
                             "Show the traceback of every error, the user's mistakes included.")
# The config fields that hold paths (made absolute by `resolve_config`).
CONFIG_PATH_FIELDS = ("data.path", "data.manual_dir", "data.data_dir", "data.splits_file",
                      "model.pretrained", "model.prefix_cache_dir")


def absolute_path(path: Optional[str]) -> Optional[str]:
  """`path` with `~` expanded and made absolute against the working directory.

  Left as they are: None and "" (they mean "default") and URLs such as `gs://bucket/dir`.
  """
  if not path or "://" in path:
    return path
  return os.path.abspath(os.path.expanduser(path))


def absolute_paths(paths: Sequence[str]) -> List[str]:
  """`absolute_path` of each entry of a comma-separated or list flag."""
  return [absolute_path(p) for p in paths]


def resolve_config(config: Any) -> ml_collections.ConfigDict:
  """A copy of a config flag's value with every path field absolute (see CONFIG_PATH_FIELDS).

  `model.pretrained` stays as it is when it names a standard file (`download.NAMES`:
  "torchvision", "timm", "keras", "keras_notop" or a file's own name) and no file of that name
  exists. A config file that failed to load raises the
  UserError that names it.
  """
  try:
    config.to_dict()
  except OSError as e:  # ml_collections defers a config file's load error to the first access.
    raise errors.UserError(_config_load_message(e)) from e
  resolved = copy.deepcopy(config)
  for field in CONFIG_PATH_FIELDS:
    group, name = field.split(".")
    if group not in resolved or name not in resolved[group]:
      continue
    value = resolved[group][name]
    if field == "model.pretrained" and value in download.NAMES and not os.path.exists(value):
      continue
    resolved[group][name] = absolute_path(value)
  return resolved


def _config_load_message(error: BaseException) -> str:
  cause = error.__cause__ or error
  lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
  detail = lines[-1] if len(lines) > 1 else ""
  return f"cannot load the config file: {detail}" if detail else str(cause)


def _config_field_message(error: BaseException, argv: Sequence[str]) -> errors.UserError:
  """A mistyped `--config.field=value` (ml_collections raises KeyError/AttributeError)."""
  text = error
  while isinstance(text, BaseException) and text.args:  # AttributeError(KeyError(message))
    text = text.args[0]
  lines = str(text).splitlines()  # ["'bitz'", 'Did you mean "bits" instead of "bitz"?']
  field = lines[0].strip("'\"") if lines else "?"
  overrides = [a.split("=")[0] for a in argv if a.startswith("--") and "." in a.split("=")[0]]
  flag = next((o for o in overrides if o.endswith("." + field)), None)
  where = f" ({flag})" if flag else ""
  hint = lines[1].strip() if len(lines) > 1 else None
  return errors.UserError(f"unknown config field {field!r}{where}", hint=hint)


def _find_user_error(error: BaseException) -> Optional[errors.UserError]:
  """The UserError that `error` is or was raised from (a library may wrap ours)."""
  seen = set()
  while error is not None and id(error) not in seen:
    if isinstance(error, errors.UserError):
      return error
    seen.add(id(error))
    error = error.__cause__ or error.__context__
  return None


def _exit_with(error: errors.UserError) -> NoReturn:
  print(f"error: {error}", file=sys.stderr)
  if error.hint:
    print(f"hint: {error.hint}", file=sys.stderr)
  sys.exit(USER_ERROR_STATUS)


def _verbose_requested(argv: Sequence[str]) -> bool:
  """--verbose from the raw arguments (flag parsing itself may be what fails)."""
  return any(a in ("--verbose", "--verbose=true", "--verbose=True", "--verbose=1") for a in argv)


def _parse_flags(argv: List[str]) -> List[str]:
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    error = errors.UserError(str(e), hint=f"{os.path.basename(argv[0])} --helpfull lists the "
                             "flags")
  except (KeyError, AttributeError) as e:
    error = _config_field_message(e, argv)
  except (TypeError, ValueError, OSError, SyntaxError) as e:
    error = errors.UserError(f"cannot load the config file: {e}".splitlines()[0])
  if _verbose_requested(argv):
    raise error
  _exit_with(error)


def _quiet_library_info(record: std_logging.LogRecord) -> bool:
  """Keeps libraries' INFO chatter (Orbax and grain per save, JAX's backend probing) out."""
  noisy = (any(f"/{package}/" in record.pathname for package in ("orbax", "grain"))
           or record.name.startswith("jax._src.xla_bridge"))
  return record.levelno > std_logging.INFO if noisy else True


def run(main: Callable[[List[str]], Any], *, positional_arguments: bool = False) -> NoReturn:
  """`absl.app.run(main)` with user errors printed as one `error:` line and status 2.

  Arguments other than flags are refused unless `positional_arguments`.
  """

  def main_with_clean_errors(argv: List[str]) -> Any:
    logging.get_absl_handler().addFilter(_quiet_library_info)
    try:
      if len(argv) > 1 and not positional_arguments:
        raise errors.UserError(f"unexpected arguments: {' '.join(argv[1:])}")
      return main(argv)
    except Exception as e:  # Re-raised unless it is (or wraps) a user error.
      user_error = _find_user_error(e)
      if user_error is None or _VERBOSE.value:
        raise
      _exit_with(user_error)

  app.run(main_with_clean_errors, flags_parser=_parse_flags)
