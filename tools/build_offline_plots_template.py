"""Build .dvc/plots/offline.html: DVC's plot page with vega, vega-lite and vega-embed inlined,
so `dvc plots show` / `dvc plots diff` render with no network (DVC's own page loads them from a CDN).

    npm pack vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2   # the versions dvc-render references
    python tools/build_offline_plots_template.py <folder with the three .tgz files>
"""
import sys
import tarfile
from pathlib import Path

LIBS = [("vega-5.20.2.tgz", "package/build/vega.min.js"), ("vega-lite-5.2.0.tgz", "package/build/vega-lite.min.js"),
        ("vega-embed-6.18.2.tgz", "package/build/vega-embed.min.js")]


def main(folder: str, out: str = ".dvc/plots/offline.html") -> None:
    scripts = []
    for tgz, member in LIBS:
        with tarfile.open(Path(folder) / tgz) as tar:
            js = tar.extractfile(member).read().decode("utf-8")
        # DVC fills {placeholders} with str.replace; make sure the libraries contain none of them.
        assert "{plot_divs}" not in js and "{scripts}" not in js and "{refresh_tag}" not in js
        js = js.replace("</script>", "<\\/script>")
        scripts.append(f"<script>/* {tgz} */\n{js}\n</script>")
    page = ("<!DOCTYPE html>\n<html>\n<head>\n{refresh_tag}\n<meta charset=\"utf-8\">\n<title>DVC plots (offline)</title>\n"
            + "\n".join(scripts) + "\n<style>table { border-spacing: 15px; }</style>\n</head>\n<body>\n{plot_divs}\n</body>\n</html>\n")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(page, encoding="utf-8")
    print(f"wrote {out} ({len(page) / 1e6:.1f} MB)")


if __name__ == "__main__":
    main(*sys.argv[1:])
