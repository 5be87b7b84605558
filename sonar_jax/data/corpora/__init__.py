"""Corpus builders: real multilingual text (and speech) from Debian packages, written in FLORES
layout (`OUT/<split>/<lang_Script>.<split>`) with speech manifests where there is audio.
`build.build_corpus` is the entry point."""
