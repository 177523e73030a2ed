"""VisualizationDemo: a config's model applied to images or video frames, with its predictions
drawn (instances, semantic or panoptic segmentation, whichever the model outputs)."""
import cv2
import torch

from detzoo.data import MetadataCatalog
from detzoo.engine.defaults import DefaultPredictor
from detzoo.utils.video_visualizer import VideoVisualizer
from detzoo.utils.visualizer import ColorMode, Visualizer

__all__ = ["VisualizationDemo"]


class VisualizationDemo:
    """Runs `DefaultPredictor(cfg)` and draws what it predicts.

    Example::

        demo = VisualizationDemo(cfg)
        predictions, vis = demo.run_on_image(cv2.imread("input.jpg"))
        vis.save("output.jpg")
    """

    def __init__(self, cfg, instance_mode=ColorMode.IMAGE, parallel=False):
        """
        Args:
            cfg (CfgNode): the model's config (MODEL.WEIGHTS, MODEL.DEVICE...); the metadata
                (class names, colors) is that of cfg.DATASETS.TEST[0].
            instance_mode (ColorMode): how instances are colored.
            parallel (bool): Detectron2 runs the model in other processes (one per GPU) with
                this; detzoo runs it in this process, so only False is accepted.
        """
        if parallel:
            raise NotImplementedError("VisualizationDemo(parallel=True) (one model process per GPU) is not "
                                      "implemented in detzoo; use parallel=False")
        self.metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else "__unused")
        self.cpu_device = torch.device("cpu")
        self.instance_mode = instance_mode
        self.parallel = parallel
        self.predictor = DefaultPredictor(cfg)

    def run_on_image(self, image):
        """
        Args:
            image (np.ndarray[H, W, 3]): uint8, BGR (as OpenCV reads it).

        Returns:
            predictions (dict): the model's output.
            vis_output (VisImage): the drawing.
        """
        predictions = self.predictor(image)
        visualizer = Visualizer(image[:, :, ::-1], self.metadata, instance_mode=self.instance_mode)
        vis_output = visualizer.output  # a model with none of the outputs below: the image as it is
        if "panoptic_seg" in predictions:
            panoptic_seg, segments_info = predictions["panoptic_seg"]
            vis_output = visualizer.draw_panoptic_seg(panoptic_seg.to(self.cpu_device), segments_info)
        else:
            if "sem_seg" in predictions:
                vis_output = visualizer.draw_sem_seg(predictions["sem_seg"].argmax(dim=0).to(self.cpu_device))
            if "instances" in predictions:
                vis_output = visualizer.draw_instance_predictions(predictions["instances"].to(self.cpu_device))
        return predictions, vis_output

    def _frame_from_video(self, video):
        while video.isOpened():
            success, frame = video.read()
            if not success:
                break
            yield frame

    def run_on_video(self, video):
        """Draw the predictions on each frame of a video; object colors stay stable across
        frames (see `VideoVisualizer`).

        Args:
            video (cv2.VideoCapture): a video file or a camera.

        Yields:
            ndarray[H, W, 3]: uint8 BGR drawing of each frame.
        """
        video_visualizer = VideoVisualizer(self.metadata, self.instance_mode)
        for frame in self._frame_from_video(video):
            yield self._draw_frame(video_visualizer, frame, self.predictor(frame))

    def _draw_frame(self, video_visualizer, frame, predictions):
        frame_rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        if "panoptic_seg" in predictions:
            panoptic_seg, segments_info = predictions["panoptic_seg"]
            vis_frame = video_visualizer.draw_panoptic_seg(frame_rgb, panoptic_seg.to(self.cpu_device), segments_info)
        elif "instances" in predictions:
            vis_frame = video_visualizer.draw_instance_predictions(frame_rgb,
                                                                   predictions["instances"].to(self.cpu_device))
        elif "sem_seg" in predictions:
            vis_frame = video_visualizer.draw_sem_seg(frame_rgb,
                                                      predictions["sem_seg"].argmax(dim=0).to(self.cpu_device))
        else:
            return frame
        return cv2.cvtColor(vis_frame.get_image(), cv2.COLOR_RGB2BGR)
