# The benchmark fixture of scripts/bench.sh (docs/PERFORMANCE.md), built by real Nix with a static
# busybox as the builder. Arguments (all strings, from --argstr):
#   busyboxSrc  host path of a static busybox
#   stdlibSrc   host path of lib/python3.11
#   siteSrc     host path of a site-packages dir ("" for the synthetic tree)
#   namesFile   a Nix file holding the list of top-level site-packages entries (or synthetic names)
#   chainLen    how many small chained paths
#   siteLayout  "per-package" (default: one store path per site-packages entry, as nixpkgs has)
#               or "one-path" (the whole tree as ONE store path, the worst case for path-level
#               laziness; issue 14)
{ busyboxSrc, stdlibSrc, siteSrc, namesFile, chainLen, siteLayout ? "per-package" }:
let
  names = import (/. + namesFile);
  nChain = builtins.fromJSON chainLen;
  busybox = builtins.path { path = /. + busyboxSrc; name = "busybox"; };
  bbbin = derivation {
    name = "bench-busybox-bin"; system = builtins.currentSystem; builder = busyboxSrc;
    args = [ "sh" "-e" "-c" "mkdir -p $out/bin; ln -s ${busybox} $out/bin/busybox; ln -s ${busybox} $out/bin/sh" ];
  };
  mk = name: script: derivation {
    inherit name; system = builtins.currentSystem;
    builder = "${bbbin}/bin/busybox"; args = [ "sh" "-e" "-c" script ];
  };
  elem = builtins.elem;

  # The standard library, without site-packages, tests, IDLE, ensurepip and the static-link
  # config dir; bytecode only at the top level (about 40 MB, 1,300 files).
  stdlib = builtins.path {
    name = "bench-python3.11-stdlib";
    path = /. + stdlibSrc;
    filter = p: t: let b = baseNameOf p; in
      !(elem b [ "site-packages" "test" "tests" "idlelib" "idle_test" "ensurepip" ])
      && builtins.substring 0 7 b != "config-"
      && !(b == "__pycache__" && dirOf p != stdlibSrc);
  };
  # A PYTHONHOME: $out/lib/python3.11 -> the stdlib.
  pyhome = mk "bench-python3.11-home" "mkdir -p $out/lib; ln -s ${stdlib} $out/lib/python3.11";

  safe = n: builtins.replaceStrings [ "~" ] [ "-" ] n;
  # One store path per top-level site-packages entry, as nixpkgs has one per Python package.
  realPkg = n: builtins.path { name = "bench-py-" + safe n; path = /. + (siteSrc + "/" + n); };
  # Synthetic package: a deterministic tree of 333 files, ~2.5 MB, of importable Python modules
  # (a comment block of pseudo-random words, then an assignment) and data files.
  synthPkg = n: mk ("bench-py-" + n) ''
    mkdir -p $out/data
    echo "VALUE = '${n}'" > $out/__init__.py
    awk -v out=$out -v seed=${builtins.substring 8 3 n} 'BEGIN {
      srand(seed + 1)
      for (f = 0; f < 333; f++) {
        if (f < 250) file = sprintf("%s/mod_%03d.py", out, f); else file = sprintf("%s/data/blob_%03d.txt", out, f)
        size = 2000 + int(rand() * 11000)
        for (n = 0; n < size; n += 72) {
          line = "#"
          for (k = 0; k < 10; k++) line = line " " substr("abcdefghijklmnopqrstuvwxyz", 1 + int(rand() * 20), 1 + int(rand() * 6))
          printf "%s\n", line > file
        }
        printf "X_%d = %d\n", f, f > file
        close(file)
      }
    }'
  '';
  pkg = n: if siteSrc == "" then synthPkg n else realPkg n;
  pkgs = map (n: { name = n; path = pkg n; }) names;
  # The environment (like python.withPackages): one symlink per package.
  sitePerPackage = mk "bench-site-packages"
    ("mkdir $out\n" + builtins.concatStringsSep "\n" (map (p: "ln -s ${p.path} \"$out/${p.name}\"") pkgs));
  # The same entries as real directories of ONE store path (a synthetic package is copied out of
  # its own path, which the copy does not reference).
  siteOnePath =
    if siteSrc == "" then
      mk "bench-site-packages-one-path" ("mkdir $out\n"
        + builtins.concatStringsSep "\n" (map (p: "cp -r ${p.path} \"$out/${p.name}\"") pkgs))
    else
      builtins.path {
        name = "bench-site-packages-one-path";
        path = /. + siteSrc;
        filter = p: t: dirOf p != siteSrc || elem (baseNameOf p) names;
      };
  site =
    if siteLayout == "per-package" then sitePerPackage
    else if siteLayout == "one-path" then siteOnePath
    else throw "siteLayout must be per-package or one-path, not ${siteLayout}";

  pad = i: if i < 10 then "0${toString i}" else toString i;
  # Small paths, each referencing the previous two (in a file and a symlink).
  step = acc: i:
    let
      n = builtins.length acc;
      prev = if n == 0 then bbbin else builtins.elemAt acc (n - 1);
      prev2 = if n < 2 then bbbin else builtins.elemAt acc (n - 2);
    in acc ++ [ (mk "bench-chain-${pad i}" ''
      mkdir -p $out/share/doc $out/lib
      echo ${prev} > $out/lib/deps
      echo ${prev2} >> $out/lib/deps
      ln -s ${prev} $out/lib/prev
      awk 'BEGIN { srand(${toString i}); for (j = 0; j < 64; j++) { for (k = 0; k < 60; k++) printf "%c", 97 + int(rand() * 26); printf "\n" } }' > $out/share/doc/notes.txt
      echo "chain link ${toString i}" > $out/index
    '') ];
  chain = builtins.foldl' step [ ] (builtins.genList (i: i + 1) nChain);
  chainLast = builtins.elemAt chain (nChain - 1);
in mk "bench-top" ''
  mkdir $out
  echo "PYHOME=${pyhome}" > $out/paths
  echo "STDLIB=${stdlib}" >> $out/paths
  echo "SITE=${site}" >> $out/paths
  echo "CHAIN_LAST=${chainLast}" >> $out/paths
  ln -s ${pyhome} $out/python
  ln -s ${site} $out/site-packages
  ln -s ${chainLast} $out/chain
''
