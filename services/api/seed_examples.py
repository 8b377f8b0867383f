"""Request examples for the OpenAPI document, taken from the seed API documents (seeds/*.md).

Where a seed example cannot run as written (a truncated base64 image, a placeholder model name), the
smallest change that makes it run is made and said. The tests send every example to a live server."""

from services.config import Config

# A 64×64 blue PNG: the seeds' examples hold truncated base64 ("iVBORw0KGgoAAAANS...").
TINY_PNG = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAEAAAABACAIAAAAlC+aJAAAAUUlEQVR42u3PMQ0AMAgAMJg45KAJqVPB"
            "QdI6aFZPXPbiOAEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAYF9H1ayAdRUDCqAAAAAAElFTkSuQmCC")

# sd_model_api.md, "图片生成" and "使用示例"
NATIVE_GENERATE = {
    "txt2img (文生图示例)": {
        "prompt": "a beautiful landscape with mountains and lakes, sunset, highly detailed, 4k",
        "width": 512, "height": 512, "num_images": 1, "guidance_scale": 7.5, "num_inference_steps": 30,
        "output_format": "png"},
    "img2img (图生图示例; a real 64×64 PNG for the seed's truncated one)": {
        "prompt": "anime style, vibrant colors", "init_image": TINY_PNG, "strength": 0.7,
        "guidance_scale": 7.5, "num_inference_steps": 30},
    "three images (示例3：批量生成多张图片)": {
        "prompt": "a cute cat playing in the garden", "width": 512, "height": 512, "num_images": 3,
        "guidance_scale": 7.5, "num_inference_steps": 30},
    "same seed, same image (示例5：使用seed实现结果复现)": {
        "prompt": "a magical forest with glowing mushrooms", "seed": 12345, "guidance_scale": 7.5,
        "num_inference_steps": 30},
}

NATIVE_UPSCALE = {"2× with Lanczos": {"image": TINY_PNG, "scale": 2, "upscaler": "Lanczos",
                                      "output_format": "png"}}

PNG_INFO = {"a PNG": {"image": TINY_PNG}}

# a1111_style.md, "文生图": the seed's request verbatim (its negative prompt is several hundred tokens)
A1111_NEGATIVE = (
    'deleted, old, oldest, ((censored)), ((bad aesthetic)), (muli view),(fused fingers:1.61051), (too many '
    'fingers:1.61051), (unclear eyes:1.331), (underexposed, overexposed, low contrast, greyscale, monochrome:1.2), '
    '(out of frame, cut off, cropped), (cloning, clones, same face, multiple girls), ((3d, toon \\(style\\), '
    'sketch, cartoonized)), (male face, obesity, fat,giantess, giant, dwarf), (lowres, worst quality, low '
    'quality, normal quality, jpep artifacts, blurry vision, blurry, watermark, signature, bad art, beginner, '
    'amateur, draft, grainy, text, title, logo, error, toon \\(style\\):1.3), ((bad anatomy, bad proportions, '
    'deformed, bad perspective, forced perspective), bad hands, poorly drawn hands, mutated hand, bad feet, bad '
    'leg, poorly drawn feet, extra arms, missing limbs, missing arms,bad arm, missing fingers, extra fingers, '
    'wrong fingers, twisted fingers,blurred fingers, extra digit, fewer digits, extra limbs, extra legs, leg '
    'disfigured, poorly drawn face, distorted face, strabismus, ugly, ugly man, ugly face, scar on face, face '
    'defect, facial tattoo, crescent facial mark, facial mark, mask, veil, faceless:1.5), (nsfw, large breasts, '
    'huge breasts, looking back, nude, nake breasts, direct lighting, lens flare, colorful background, warm '
    'colors, strong color, high color saturation, colorful:1.2), badhandsv5-neg, badhandv4, EasyNegative, '
    'easynegative, ng_deepnegative_v1_75t, verybadimagenegative_v1.3, painting, sketches, (low quality, worst '
    'quality:1.5),\ndeformed, bad anatomy, lowres, monochrome, grayscale,ugly face, inaccurate limb, bad hands, '
    'mutated hands,mutated legs, missing fingers, extra fingers')
A1111_TXT2IMG = {
    "the seed's txt2img request (文生图)": {
        "width": 512, "height": 512, "batch_size": 1, "prompt": "", "negative_prompt": A1111_NEGATIVE,
        "steps": 30, "seed": -1, "enable_hr": False, "hr_upscaler": "ESRGAN_4x", "task_id": ""},
    "a style prefix and a LoRA-free prompt, with a task_id (风格为追加到prompt字段后)": {
        "width": 512, "height": 512, "batch_size": 1,
        "prompt": "((best quality)), ((masterpiece)), a lighthouse at dusk", "negative_prompt": "lowres",
        "steps": 20, "seed": 42, "sampler_name": "Euler a", "task_id": "lighthouse-0001"},
}
A1111_IMG2IMG = {"img2img of a small image": {
    "init_images": [TINY_PNG], "prompt": "a lighthouse at dusk", "width": 64, "height": 64,
    "denoising_strength": 0.6, "steps": 10, "sampler_name": "DPM++ 2M", "scheduler": "Karras"}}


def a1111_options(config: Config) -> dict:
    """切换模型: the seed's {"sd_model_checkpoint": "模型名称"}, with a model this server has."""
    return {"sd_model_checkpoint": config.default_model}


A1111_OPTIONS = {"switch the model (切换模型)": a1111_options}
A1111_EXTRAS = {"2× with Lanczos": {"image": TINY_PNG, "upscaling_resize": 2, "upscaler_1": "Lanczos"}}


# fooocusapi.md, "三种返回示例": its three requests (the async one's empty prompt as sent)
_FOOOCUS = {"prompt": "", "negative_prompt": "", "performance_selection": "Lightning", "webhook_url": ""}
FOOOCUS_GENERATE = {
    "a task object at once (异步任务)": {**_FOOOCUS, "async_process": True},
    "streamed progress (流式输出)": {**_FOOOCUS, "stream_output": True},
    "the image itself (二进制输出)": {**_FOOOCUS, "async_process": False, "stream_output": False},
}

# sd_work_manager.md: its example requests ("BASE64 ENCODED" made a real image; `module` a model this
# server has, for the seed's "furry")
SDWM_NEGATIVE = ("deformed,lowres,deformed,bad anatomy,disfigured,poorly drawn face,mutation,mutated,extra limb,ugly,"
                 "poorly drawn hands,missing limb,floating limbs,disconnected limbs,malformed hands,out of focus,"
                 "big boobs,long neck,long body,monochrome,signature,watermark,text")
SDWM_TXT2IMG = {"submitTxt2ImgTask": {"width": 256, "height": 256, "prompts": "loli", "negativePrompts": SDWM_NEGATIVE,
                                      "count": 1, "steps": 20, "scale": 8, "comment": "test"}}


def sdwm_img2img(config: Config) -> dict:
    return {"width": 512, "height": 512, "prompts": "loli", "initialImages": [TINY_PNG.split(",", 1)[1]],
            "negativePrompts": SDWM_NEGATIVE, "steps": 20, "scale": 8, "denoise": 0.8, "resizeMode": 2,
            "module": config.default_model, "comment": "test"}


SDWM_IMG2IMG = {"submitImg2ImgTask": sdwm_img2img}
SDWM_UPSCALE = {"submitUpscaleTask": {"image": TINY_PNG.split(",", 1)[1], "scale": 4}}
SDWM_STATE = {"getTaskState": {"taskId": 1}}
