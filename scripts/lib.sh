# Sourced by the scripts: labo_python prints the Python to use ($PYTHON, else the repository's
# .venv made by scripts/install.sh, else python on PATH).
labo_python() {
  local repo
  repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  if [[ -n "${PYTHON:-}" ]]; then echo "$PYTHON"
  elif [[ -x "$repo/.venv/bin/python" ]]; then echo "$repo/.venv/bin/python"
  else command -v python3 || command -v python
  fi
}
