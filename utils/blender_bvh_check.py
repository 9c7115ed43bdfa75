"""Import a BVH file into Blender headless and print the armature's joint positions as JSON (a check of utils/bvh.py).

    blender -b --factory-startup --python utils/blender_bvh_check.py -- FILE.bvh OUT.json [FRAME ...]

Runs inside Blender's Python (bpy). Debian's Blender 3.4 BVH importer opens the file with mode "rU", which Python
3.11 rejects; `open` is wrapped for the duration of the import so that the "U" is dropped. For each requested frame
(0-based; default 0 and the last) the JSON holds the world position of every bone's head (the joint) in the file's
units, keyed by bone name, in the file's axes (the importer's Y-up to Z-up conversion is undone).
"""
import builtins
import json
import sys


def main() -> None:
    import bpy
    from mathutils import Matrix

    argv = sys.argv[sys.argv.index("--") + 1:]
    path, out = argv[0], argv[1]
    frames = [int(f) for f in argv[2:]]
    real_open = builtins.open

    def open_without_u(file, mode="r", *args, **kwargs):
        return real_open(file, mode.replace("U", ""), *args, **kwargs)

    builtins.open = open_without_u
    try:
        bpy.ops.import_anim.bvh(filepath=path, global_scale=1.0, frame_start=1, use_fps_scale=False,
                                update_scene_fps=True, update_scene_duration=True, axis_forward="-Z", axis_up="Y")
    finally:
        builtins.open = real_open
    arm = next(o for o in bpy.context.scene.objects if o.type == "ARMATURE")
    start, end = arm.animation_data.action.frame_range
    n_frames = int(round(end - start)) + 1
    frames = frames or [0, n_frames - 1]
    to_file_axes = Matrix(((1, 0, 0), (0, 0, 1), (0, -1, 0))).to_4x4()     # Blender Z-up back to the file's Y-up
    result = {"bones": len(arm.pose.bones), "frames": n_frames, "fps": bpy.context.scene.render.fps,
              "positions": {}}
    for f in frames:
        bpy.context.scene.frame_set(int(bpy.context.scene.frame_start) + f)
        world = to_file_axes @ arm.matrix_world
        result["positions"][str(f)] = {b.name: list(world @ b.head) for b in arm.pose.bones}
    with real_open(out, "w") as fh:
        json.dump(result, fh)


if __name__ == "__main__":
    main()
