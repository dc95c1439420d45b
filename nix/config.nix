# The netboot-init config (/etc/netboot-init.json, version 1) for a NixOS system, as a plain
# attribute set: serialize it with builtins.toJSON. Pure Nix, no nixpkgs, so it can be evaluated
# and tested on its own.
#
#   import ./config.nix {
#     fileSystems = config.fileSystems;          # NixOS `fileSystems`, after merging
#     settings = { init = "${toplevel}/init"; registration = { ... }; ... };
#   }
#
# `fileSystems`: the enabled entries needed for boot (`neededForBoot`, or a mount point NixOS
# always mounts in stage 1) become `fileSystems` of the config, parents and dependencies first.
# Only the fields the init reads are kept: mountPoint, device, fsType, options, overlay.
# Options only systemd or the scripted stage 1 read (`x-initrd.mount`, `x-systemd.*`) are
# dropped, and the older `lowerdir=`/`upperdir=`/`workdir=` options of an overlay become its
# `overlay` attribute. What NixOS can express but the init cannot do (labels, encryption,
# automatic formatting or resizing, `fsType = "auto"`, overlay directories outside the new
# root) is an evaluation error naming the file system.
#
# `settings`: the remaining top-level fields of the config, named as in the JSON (init,
# targetRoot, modulesDir, kernelModules, moduleParams, registration, failure). Null values are
# left out, so the init's defaults apply; an unknown name is an error.
{ fileSystems, settings ? { } }:

let
  inherit (builtins)
    any
    attrNames
    concatMap
    elem
    filter
    head
    isAttrs
    isString
    length
    listToAttrs
    stringLength
    substring
    ;

  # Mount points NixOS mounts in stage 1 whether or not `neededForBoot` is set
  # (nixpkgs lib/utils.nix, pathsNeededForBoot).
  pathsNeededForBoot = [
    "/"
    "/nix"
    "/nix/store"
    "/var"
    "/var/log"
    "/var/lib"
    "/var/lib/nixos"
    "/etc"
    "/usr"
  ];

  settingNames = [
    "init"
    "targetRoot"
    "modulesDir"
    "kernelModules"
    "moduleParams"
    "registration"
    "failure"
  ];

  hasPrefix = prefix: s: substring 0 (stringLength prefix) s == prefix;
  removePrefix = prefix: s: substring (stringLength prefix) (stringLength s) s;
  isAbsolute = hasPrefix "/";
  # "/a" -> "/a/", "/" -> "/": prefix tests then only match whole path components.
  withSlash = p: if p != "" && substring (stringLength p - 1) 1 p == "/" then p else p + "/";

  get = fs: name: default: if fs ? ${name} && fs.${name} != null then fs.${name} else default;
  dropNulls = attrs: listToAttrs (
    concatMap (n: if attrs.${n} == null then [ ] else [ { name = n; value = attrs.${n}; } ]) (attrNames attrs)
  );

  splitColon = s: filter isString (builtins.split ":" s);

  # Options named `name=value` (the older NixOS overlay style): the values.
  optionValues = name: options: map (removePrefix "${name}=") (filter (hasPrefix "${name}=") options);
  single = what: values: if values == [ ] then null else if length values == 1 then head values
    else throw "netboot-init: ${what} is given ${toString (length values)} times";

  isOverlayDirOption = o: hasPrefix "lowerdir=" o || hasPrefix "upperdir=" o || hasPrefix "workdir=" o;
  # Read by systemd (fstab generator, mount units) or the scripted stage 1's fstab only.
  isSystemdOnlyOption = o: o == "x-initrd.mount" || hasPrefix "x-systemd." o;

  # `enable = false` (nixpkgs 24.11 and later) takes an entry out entirely.
  neededForBoot = name: fs: get fs "enable" true
    && (get fs "neededForBoot" false || elem (get fs "mountPoint" name) pathsNeededForBoot);

  # One NixOS fileSystems entry, checked, with the fields the init reads.
  convert = name: raw:
    let
      fs = raw // { mountPoint = get raw "mountPoint" name; };
      where = "netboot-init: fileSystems.\"${name}\"";
      fsType = get fs "fsType" "auto";
      options = map toString (get fs "options" [ ]);
      overlayAttr = get fs "overlay" { };
      newStyle = get overlayAttr "lowerdir" null != null;
      overlay =
        if fsType != "overlay" then null
        else if newStyle then dropNulls {
          lowerdir = map toString overlayAttr.lowerdir;
          upperdir = get overlayAttr "upperdir" null;
          workdir = get overlayAttr "workdir" null;
        }
        else
          let lower = single "${where}: lowerdir=" (optionValues "lowerdir" options);
          in if lower == null then throw "${where}: an overlay needs overlay.lowerdir (or a lowerdir= option)"
          else dropNulls {
            lowerdir = splitColon lower;
            upperdir = single "${where}: upperdir=" (optionValues "upperdir" options);
            workdir = single "${where}: workdir=" (optionValues "workdir" options);
          };
      keptOptions = filter (o: !isSystemdOnlyOption o && !(overlay != null && isOverlayDirOption o)) options;
      device = get fs "device" null;
      label = get fs "label" null;
      encrypted = get fs "encrypted" { };
      stratis = get fs "stratis" { };
      unsupported =
        if fsType == "auto" then "fsType \"auto\" (netboot-init does not probe; name the type)"
        else if device == null && label != null then "label (netboot-init has no /dev/disk/by-label; set device)"
        else if get encrypted "enable" false then "encrypted (netboot-init does not unlock devices)"
        else if get fs "autoFormat" false then "autoFormat (netboot-init does not format)"
        else if get fs "autoResize" false then "autoResize (netboot-init does not resize)"
        else if get stratis "poolUuid" null != null then "stratis (netboot-init does not assemble pools)"
        else if newStyle && !(get overlayAttr "useStage1BaseDirectories" true)
        then "overlay.useStage1BaseDirectories = false (netboot-init finds overlay directories in the new root only)"
        else null;
      depends = map toString (get fs "depends" [ ]);
    in
    if unsupported != null then throw "${where}: ${unsupported}"
    else {
      # Ordering only; removed before the entry is serialized.
      _after = [ fs.mountPoint ] ++ depends
        ++ (if device != null && isAbsolute device then [ device ] else [ ])
        ++ (if overlay == null then [ ] else overlay.lowerdir ++ filter (d: d != null) [ (get overlay "upperdir" null) (get overlay "workdir" null) ]);
      entry = dropNulls {
        inherit (fs) mountPoint;
        inherit device fsType overlay;
        options = if keptOptions == [ ] then null else keptOptions;
      };
    };

  # `a` must be mounted before `b` when `b`'s mount point, device, `depends` or overlay
  # directories lie under `a`'s mount point (as nixpkgs' fsBefore, plus the overlay dirs).
  before = a: b: a.entry.mountPoint != b.entry.mountPoint
    && any (p: hasPrefix (withSlash a.entry.mountPoint) (withSlash p)) b._after;

  # Kahn's algorithm, taking the first ready entry each time, so independent entries keep
  # their (sorted) name order.
  toposort = list:
    if list == [ ] then [ ]
    else
      let ready = filter (x: !(any (y: before y x) list)) list;
      in if ready == [ ] then throw "netboot-init: fileSystems ${toString (map (x: x.entry.mountPoint) list)} depend on each other in a cycle"
      else [ (head ready) ] ++ toposort (filter (x: x.entry.mountPoint != (head ready).entry.mountPoint) list);

  selected = map (n: convert n fileSystems.${n}) (filter (n: neededForBoot n fileSystems.${n}) (attrNames fileSystems));
  ordered = map (c: c.entry) (toposort selected);

  unknownSettings = filter (n: !(elem n settingNames)) (attrNames settings);
  cleanSection = name: v: if isAttrs v then dropNulls v else throw "netboot-init: settings.${name} must be an attribute set";
  cleaned = dropNulls (settings // {
    registration = if settings ? registration then cleanSection "registration" settings.registration else null;
    failure = if settings ? failure then cleanSection "failure" settings.failure else null;
  });
in
if !isAttrs fileSystems then throw "netboot-init: fileSystems must be an attribute set (NixOS config.fileSystems)"
else if unknownSettings != [ ] then throw "netboot-init: unknown settings ${toString unknownSettings} (known: ${toString settingNames})"
else if !(any (fs: fs.mountPoint == "/") ordered) then throw "netboot-init: fileSystems has no entry for \"/\""
else cleaned // {
  version = 1;
  fileSystems = ordered;
}
