"""SST in other tools' model loaders. Each submodule imports its tool (an optional extra); ``import ribsr``
imports none of them."""
