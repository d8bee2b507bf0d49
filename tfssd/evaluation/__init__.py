"""Evaluation: Pascal VOC mAP, COCO AP through pycocotools, and the one evaluation loop."""
