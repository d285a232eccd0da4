"""Architecture and schedule of the shipped emoji model, shared by the
training, export and evaluation scripts."""

IMAGE_SIZE = 64
LATENT_SIZE = 16

VAE = dict(in_channels=3, out_channels=3, block_out_channels=(32, 64, 64), layers_per_block=1,
           down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
           latent_channels=4, norm_num_groups=16, sample_size=IMAGE_SIZE)

UNET = dict(sample_size=LATENT_SIZE, in_channels=4, out_channels=4, block_out_channels=(48, 80, 96),
            layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=64,
            attention_head_dim=4, norm_num_groups=16)

TEXT = dict(vocab_size=49408, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=77, projection_dim=64, hidden_act="quick_gelu", bos_token_id=49406,
            eos_token_id=49407, pad_token_id=49407)

# 1024 training steps so that every power-of-two step count divides it and
# DDIM's `t - T // N` lands exactly on the next trailing timestep.
SCHEDULER = dict(num_train_timesteps=1024, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                 timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=False, steps_offset=0)

# The teacher is sampled with classifier-free guidance at this scale; the
# student is distilled from the guided teacher, so it runs at scale 1.
TEACHER_GUIDANCE = 3.0

# The student runs this many DDIM steps (where progressive distillation ends;
# the guidance-conditioned student is trained on this grid too).
STUDENT_STEPS = 4

# The guidance-conditioned student (distill_guidance.py): the UNet above plus
# diffusers' guidance embedding (`time_cond_proj_dim`, as in LCM), trained for
# guidance scales w in [1, W_MAX]; the pipelines feed it embed(w - 1).
UNET_W = dict(UNET, time_cond_proj_dim=256)
W_MAX = 4.0

# The 4x upscaler (train_upscaler.py), diffusers' StableDiffusionUpscalePipeline
# layout: 64x64 image -> 256x256. Its VAE is the generator's without the
# mid-block attention (fine-tuned at 256x256: 64x64x4 latents), its UNet sees
# the noisy latents and the noised low-res image (4 + 3 channels) and the
# low-res noise level as a class label; no attention anywhere, so both are
# pure convolution networks (trained on crops, run at any size).
UPSCALER_VAE = dict(VAE, mid_block_add_attention=False, sample_size=4 * IMAGE_SIZE)

UPSCALER_UNET = dict(sample_size=IMAGE_SIZE, in_channels=7, out_channels=4, block_out_channels=(32, 64, 128),
                     layers_per_block=1, down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3,
                     mid_block_type=None, cross_attention_dim=8, norm_num_groups=16, num_class_embeds=1000)

# diffusers' pipeline encodes the prompt whatever the UNet does with it: a
# text encoder as small as the CLIP vocabulary allows, never trained.
UPSCALER_TEXT = dict(TEXT, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=1,
                     projection_dim=8)

# The low-res image's noise augmentation (the pipeline's `noise_level`), as
# the SD x4 upscaler's low_res_scheduler and max_noise_level.
UPSCALER_LOW_RES_SCHEDULER = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.0001,
                                  beta_end=0.02)
UPSCALER_MAX_NOISE_LEVEL = 350
UPSCALER_NOISE_LEVEL = 20
